-- Rows the decision did not write itself: written with another slot width
-- (before slots were W/100, or under another window), or never made (a
-- sharded bucket's rows that no turn made yet, or the purge removed). They
-- count what is still in their own window, say when they free in their own
-- units, and a missing shard is made and used.
begin;
\ir ../support/pgtap-helpers.psql
select plan(5);

-- test: shards holding only old-width admissions from an hour ago have room;
-- a turn whose random start is the one full shard finds them
create temp table t_res (i int, r jsonb);
do $$
declare
  v_now timestamptz := '2026-03-01 10:00:00+00';
  v_ms bigint := (extract(epoch from timestamptz '2026-03-01 10:00:00+00') * 1000)::bigint;
begin
  for i in 1 .. 40 loop
    delete from ops.rate_limits where bucket_key like 'org:stale#4.%';
    insert into ops.rate_limits (bucket_key, max_requests, window_seconds, slot_ms, slot_ids, slot_counts, slot_total)
    values ('org:stale#4.0', 2, 60, 600, array[v_ms / 600 - 1], array[2], 2),
           ('org:stale#4.1', 2, 60, 3000, array[(v_ms - 3600000) / 3000], array[2], 2),
           ('org:stale#4.2', 2, 60, 3000, array[(v_ms - 3600000) / 3000], array[2], 2),
           ('org:stale#4.3', 2, 60, 3000, array[(v_ms - 3600000) / 3000], array[2], 2);
    insert into t_res values (i, ops.consume_rate_limits(array['org:stale'], array[8], array[60], v_now, 4));
  end loop;
end $$;
select is((select count(*)::int from t_res where not (r ->> 'allowed')::boolean), 0,
  'with 2 of 8 admissions in the window, no turn is refused, whichever shard it starts from');

-- test: a bucket full of admissions written with 3 s slots ten seconds ago
-- frees when they leave their window, about 50 s on, not in 1 s
insert into ops.rate_limits (bucket_key, max_requests, window_seconds, slot_ms, slot_ids, slot_counts, slot_total)
values ('user:old-width', 3, 60, 3000,
        array[(extract(epoch from timestamptz '2026-03-01 09:59:50+00') * 1000)::bigint / 3000], array[3], 3);
select ok((select (ops.consume_rate_limits(array['user:old-width'], array[3], array[60], '2026-03-01 10:00:00+00')
                   ->> 'retry_after_seconds')::int between 50 and 53),
  'the Retry-After of old-width admissions is when they leave their own window');
select is((ops.consume_rate_limits(array['user:old-width'], array[3], array[60], '2026-03-01 10:00:49+00') ->> 'allowed')::boolean,
  false, 'and it is still full before then');
select is((ops.consume_rate_limits(array['user:old-width'], array[3], array[60], '2026-03-01 10:00:54+00') ->> 'allowed')::boolean,
  true, 'and has room after');

-- test: a sharded bucket none of whose rows exist (no policy change laid
-- them out) admits its whole limit: the turn that finds none makes them
select is((select count(*)::int from generate_series(1, 20) g
           where (ops.consume_rate_limits(array['org:fresh'], array[8], array[60], '2026-03-01 10:00:00+00', 4) ->> 'allowed')::boolean),
  8, 'twenty turns on 4 shards never made admit the limit of 8');

select * from finish();
rollback;
