-- Local seed for `supabase db reset`. Intentionally empty: tenants and
-- members are created by `deno task token -- --user <uuid> --org <uuid>`,
-- which signs a token and adds the membership it needs.
select 1;
