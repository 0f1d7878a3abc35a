-- agent-chat: no duplicate index on public.org_memberships.
--
-- The first migration adds org_memberships_org_user_lookup_idx for projects
-- whose existing org_memberships table lacks an (org_id, user_id) index.
-- Where another index already starts with those columns (the primary key
-- of the table this project creates), it is a duplicate: drop it.
do $$
begin
  if to_regclass('public.org_memberships_org_user_lookup_idx') is not null and exists (
    select 1
    from pg_index i
    where i.indrelid = 'public.org_memberships'::regclass
      and i.indexrelid <> 'public.org_memberships_org_user_lookup_idx'::regclass
      and i.indnatts >= 2
      and i.indkey[0] = (select attnum from pg_attribute where attrelid = i.indrelid and attname = 'org_id')
      and i.indkey[1] = (select attnum from pg_attribute where attrelid = i.indrelid and attname = 'user_id')
  ) then
    drop index public.org_memberships_org_user_lookup_idx;
  end if;
end
$$;
