-- Finding (attack): a usage row's error_message is the upstream's error text
-- (`openai 400: ...`), which a gateway may fill with the member's message.
-- Erasure removed it, but retention kept it for usage_row_months (13):
-- after usage_personal_days it goes with the other personal fields, also on
-- a row that had no personal metadata (a service call without client_ip).
begin;
\ir ../support/pgtap-helpers.psql
select plan(4);

-- setup
create temp table t_ctx as select gen_random_uuid() as org, timestamptz '2026-06-01 00:00:00+00' as now;
insert into public.agent_usage_events (request_id, org_id, model, total_tokens, success, error_code, error_message, metadata, created_at)
select 'errd-' || r.name, t.org, 'gpt-4.1-mini', 0, false, 'openai_error',
       'openai 400: Invalid content: "My phone is +250 788 123 456"', r.meta, t.now - r.age
from t_ctx t, (values ('old', '{"store": "supabase", "client_ip": "10.1.2.3"}'::jsonb, interval '31 days'),
                      ('old-noip', '{"store": "supabase"}'::jsonb, interval '31 days'),
                      ('fresh', '{"store": "supabase"}'::jsonb, interval '2 days')) r (name, meta, age);

-- test
select ops.purge_expired((select now from t_ctx));
select is((select error_message from public.agent_usage_events where request_id = 'errd-old'), null,
  'an old row''s upstream error text goes after usage_personal_days');
select is((select error_message from public.agent_usage_events where request_id = 'errd-old-noip'), null,
  'also on a row that had no personal metadata');
select is((select error_code from public.agent_usage_events where request_id = 'errd-old-noip'), 'openai_error',
  'the error code stays (reports and alerts count it)');
select isnt((select error_message from public.agent_usage_events where request_id = 'errd-fresh'), null,
  'a fresh row keeps its detail for investigation');

select * from finish();
rollback;
