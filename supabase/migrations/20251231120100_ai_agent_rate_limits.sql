-- agent-chat: the rate-limit decision, ops.consume_rate_limits, and the
-- token counters of the token quotas (same slot algorithm, weighted).
--
-- Algorithm: sliding window over sub-windows ("slots"). A bucket's window of
-- W seconds is cut into 20 slots of W/20 each; its row in ops.rate_limits
-- keeps, per recent slot, how many requests it admitted. A request is
-- admitted when the admissions counted in every slot that overlaps
-- (now - W, now] are fewer than the limit N.
--
-- Guarantee: never more than N admissions in any W-second interval, under
-- any concurrency (the rows are locked in one global order for the decision).
-- The price of the bounded row size: a request can be refused up to one
-- slot (W/20) earlier than an exact sliding log would refuse it.
-- All-or-nothing: the org:, user:, ip: and channel: buckets are decided
-- together, each with its own limit and window (a tenant policy may set them).
-- Every bucket is locked and evaluated first, and rows are written only when
-- all of them allow, so a refused request writes nothing.

create function ops.consume_rate_limits(
  p_bucket_keys text[],
  p_limits integer[],
  p_windows integer[],
  p_now timestamptz default now()
)
returns jsonb
language plpgsql
set search_path = ''
set plan_cache_mode = force_generic_plan
as $$
-- Two statements, each a cached generic plan with one primary-key lookup
-- per bucket: lock the buckets, then decide and (only when every bucket
-- allows) count the request in each, building the answer in the same
-- statement. A refusal runs a third, to say when to retry.
declare
  v_now_ms bigint := (extract(epoch from p_now) * 1000)::bigint;
  v_decision jsonb;
begin
  if coalesce(array_length(p_bucket_keys, 1), 0) <> coalesce(array_length(p_limits, 1), 0)
     or coalesce(array_length(p_bucket_keys, 1), 0) <> coalesce(array_length(p_windows, 1), 0) then
    raise exception 'one limit and one window per bucket key' using errcode = '22023';
  end if;
  -- Every limit and window at least 1 (a simple expression; the query
  -- only runs to name the offending keys).
  if (1 <= all (p_limits) and 1 <= all (p_windows)) is not true
     and exists (select 1 from unnest(p_bucket_keys, p_limits, p_windows) as t (key, lim, win)
                 where t.key is not null and (coalesce(t.lim, 0) < 1 or coalesce(t.win, 0) < 1)) then
    raise exception 'limit and window of % must be positive integers',
      (select string_agg(t.key, ', ') from unnest(p_bucket_keys, p_limits, p_windows) as t (key, lim, win)
       where t.key is not null and (coalesce(t.lim, 0) < 1 or coalesce(t.win, 0) < 1))
      using errcode = '22023';
  end if;

  -- 1. Lock every bucket in one global order (user:, ip:, org:, channel:
  -- last; then by key), so concurrent callers never deadlock and the busiest
  -- rows (org:, a global channel:) are held for the shortest time. One
  -- statement, row by row in that order: a bucket seen for the first time is
  -- inserted empty, an existing one is locked (ON CONFLICT DO UPDATE locks
  -- the row, the latest version whoever committed it, even when its WHERE
  -- updates nothing).
  insert into ops.rate_limits as r (bucket_key, max_requests, window_seconds, slot_ms)
  select t.key, t.lim, t.win, t.win::bigint * 50
  from unnest(p_bucket_keys, p_limits, p_windows) as t (key, lim, win)
  where t.key is not null
  order by case split_part(t.key, ':', 1) when 'user' then 1 when 'ip' then 2 when 'org' then 3 when 'channel' then 4 else 0 end,
           t.key collate "C"
  on conflict (bucket_key) do update set updated_at = r.updated_at where false;

  -- 2. Decide, count and answer in one statement. Per bucket (found through
  -- the primary key, = any: an index scan whatever the table's size): the
  -- admissions still in the window and how many stored slots left it (they
  -- are stored ascending, so the kept ones are a suffix); after a window
  -- change whatever may still sit in the old window is counted in the
  -- current slot (over-counting, never under). Only when every bucket has
  -- room does each count the request in the current slot; the answer is the
  -- tightest bucket, built once. A refusal writes nothing and answers null
  -- here: the statement below names the full bucket.
  with b as (
    select t.key, t.lim, t.win, t.slot_ms, n.now_ms / t.slot_ms as slot, k.used,
           case when r.slot_ms = t.slot_ms then r.slot_ids[k.dropped + 1:]
                when k.used > 0 then array[n.now_ms / t.slot_ms] else '{}' end as ids,
           case when r.slot_ms = t.slot_ms then r.slot_counts[k.dropped + 1:]
                when k.used > 0 then array[k.used] else '{}' end as counts
    from (select u.key, u.lim, u.win, u.win::bigint * 50 as slot_ms
          from unnest(p_bucket_keys, p_limits, p_windows) as u (key, lim, win)
          where u.key is not null) t
    -- One primary-key lookup per bucket (offset 0 keeps it a nested loop,
    -- whatever the table's size and statistics).
    cross join lateral (
      select r.slot_ms, r.window_seconds, r.slot_ids, r.slot_counts
      from ops.rate_limits r where r.bucket_key = t.key offset 0
    ) r
    -- The bucket's clock never goes back: a turn whose transaction started
    -- before the newest admission's (it waited for the lock) decides at that
    -- admission's slot. So the slots stay ascending and what one decision
    -- drops as out of the window no later decision would have counted.
    cross join lateral (
      select greatest(v_now_ms, case when r.slot_ms = t.slot_ms then r.slot_ids[cardinality(r.slot_ids)] * t.slot_ms end) as now_ms
    ) n
    cross join lateral (
      select coalesce(sum(s.n) filter (where s.keep), 0)::integer as used,
             (count(*) filter (where not s.keep))::integer as dropped
      from (select x.n,
                   case when r.slot_ms = t.slot_ms then x.id >= (n.now_ms - t.win::bigint * 1000) / t.slot_ms
                        else (x.id + 1) * r.slot_ms > n.now_ms - r.window_seconds::bigint * 1000 end as keep
            from unnest(r.slot_ids, r.slot_counts) as x (id, n)) s
    ) k
  ),
  -- Written through the primary key (every row exists and is locked, so
  -- each is an update).
  counted as (
    insert into ops.rate_limits as r (bucket_key, max_requests, window_seconds, slot_ms, slot_ids, slot_counts, slot_total, updated_at)
    select b.key, b.lim, b.win, b.slot_ms,
           case when b.ids[cardinality(b.ids)] = b.slot then b.ids else b.ids || b.slot end,
           case when b.ids[cardinality(b.ids)] = b.slot
                then b.counts[:cardinality(b.counts) - 1] || (b.counts[cardinality(b.counts)] + 1)
                else b.counts || 1 end,
           b.used + 1, p_now
    from b
    where not exists (select 1 from b f where f.used >= f.lim)
    on conflict (bucket_key) do update
    set max_requests = excluded.max_requests, window_seconds = excluded.window_seconds, slot_ms = excluded.slot_ms,
        slot_ids = excluded.slot_ids, slot_counts = excluded.slot_counts, slot_total = excluded.slot_total,
        updated_at = excluded.updated_at
  )
  select jsonb_build_object(
           'allowed', true,
           'scope', split_part(e.key, ':', 1),
           'key', e.key,
           'limit', e.lim,
           'window_seconds', e.win,
           'remaining', e.lim - e.used - 1,
           -- Room grows again when the oldest counted slot (or this one) leaves the window.
           'reset_seconds', ceil(greatest((coalesce(e.ids[1], e.slot) + 1) * e.slot_ms + e.win::bigint * 1000 - v_now_ms, 1) / 1000.0)::integer,
           'retry_after_seconds', 0)
  from b e
  where not exists (select 1 from b f where f.used >= f.lim)
  order by e.lim - e.used,
           case split_part(e.key, ':', 1) when 'user' then 1 when 'ip' then 2 when 'org' then 3 when 'channel' then 4 else 0 end,
           e.key collate "C"
  limit 1
  into v_decision;
  if v_decision is not null then
    return v_decision;
  end if;

  -- 3. Refused (the rows are still locked and unchanged): the full bucket
  -- that frees last, and when enough admissions will have left it: the
  -- first slot whose leaving brings the count under the limit.
  select jsonb_build_object(
           'allowed', false,
           'scope', split_part(f.key, ':', 1),
           'key', f.key,
           'limit', f.lim,
           'window_seconds', f.win,
           'remaining', 0,
           'reset_seconds', w.retry,
           'retry_after_seconds', w.retry)
  from (
    select r.bucket_key as key, q.lim, q.win, q.slot_ms, k.used, k.ids, k.counts
    from ops.rate_limits r
    cross join lateral (
      select p_limits[i] as lim, p_windows[i] as win, p_windows[i]::bigint * 50 as slot_ms
      from array_position(p_bucket_keys, r.bucket_key) as i
    ) q
    cross join lateral (
      select coalesce(sum(s.n), 0)::integer as used, array_agg(s.id) as ids, array_agg(s.n) as counts
      from unnest(r.slot_ids, r.slot_counts) as s (id, n)
      where case when r.slot_ms = q.slot_ms
                 then s.id >= (v_now_ms - q.win::bigint * 1000) / q.slot_ms
                 else (s.id + 1) * r.slot_ms > v_now_ms - r.window_seconds::bigint * 1000 end
    ) k
    where r.bucket_key = any (p_bucket_keys) and k.used >= q.lim
  ) f
  cross join lateral (
    select greatest(ceil(coalesce(min((x.id + 1) * f.slot_ms + f.win::bigint * 1000 - v_now_ms)
                                  filter (where f.used - x.freed < f.lim), 0) / 1000.0)::integer, 1) as retry
    from (select s.id, sum(s.n) over (order by s.ord) as freed
          from unnest(f.ids, f.counts) with ordinality as s (id, n, ord)) x
  ) w
  -- Of several full buckets, the one that frees last: a client that waits
  -- the Retry-After it is given finds every bucket with room.
  order by w.retry desc,
           case split_part(f.key, ':', 1) when 'user' then 1 when 'ip' then 2 when 'org' then 3 when 'channel' then 4 else 0 end,
           f.key collate "C"
  limit 1
  into v_decision;
  -- No bucket at all: nothing to refuse.
  return coalesce(v_decision, '{"allowed": true, "retry_after_seconds": 0}'::jsonb);
end;
$$;
comment on function ops.consume_rate_limits(text[], integer[], integer[], timestamptz) is
  'All-or-nothing sliding-window decision over several buckets, each with its limit and window: locks them in a fixed order, admits only if every bucket has room, then counts the request in each. Never more than N admissions in any W seconds per bucket; a refusal writes nothing. Returns one bucket: {allowed, scope, key, limit, window_seconds, remaining, reset_seconds, retry_after_seconds}, the one with the least room left when admitted, the first full one in lock order when refused.';


-- ---------------------------------------------------------------------------
-- A hot tenant's org: bucket split into K shards, org:<id>#0 .. #K-1, whose
-- limits add up to the org limit (floor(N/K), one more for the first N mod K).
-- A turn takes one shard nobody else holds (for update skip locked, from a
-- random start), then the usual all-or-nothing decision runs with that shard
-- as the org bucket; if the shard is full it tries the next free one. So K
-- turns of one org decide at once instead of queueing on one row.
--
-- Exact: a shard never admits past its own limit, so the org never admits
-- past the sum, N, in any window. The price: a turn is refused when every
-- shard it could take without waiting is full, though a shard held by
-- another turn at that instant may have had room (under-admission, never
-- over-admission). Lock order: the first shard is taken before the other
-- buckets (holding nothing else, so waiting for it cannot deadlock); later
-- shards only with skip locked, never waiting.
-- ---------------------------------------------------------------------------
create function ops.consume_rate_limits_sharded(
  p_bucket_keys text[],
  p_limits integer[],
  p_windows integer[],
  p_now timestamptz,
  p_shards integer
)
returns jsonb
language plpgsql
set search_path = ''
set plan_cache_mode = force_generic_plan
as $$
-- p_bucket_keys[1] is the org: key (the one sharded), as agent_begin_turn passes it.
declare
  v_shards integer := least(greatest(coalesce(p_shards, 1), 1), greatest(p_limits[1], 1));
  v_start integer := floor(random() * least(greatest(coalesce(p_shards, 1), 1), greatest(p_limits[1], 1)))::integer;
  v_keys text[];
  v_tried text[] := '{}';
  v_key text;
  v_shard integer;
  v_decision jsonb;
  v_refusal jsonb;
begin
  if v_shards = 1 then
    return ops.consume_rate_limits(p_bucket_keys, p_limits, p_windows, p_now);
  end if;
  select array_agg(p_bucket_keys[1] || '#' || s order by (s - v_start + v_shards) % v_shards)
  into v_keys from generate_series(0, v_shards - 1) s;
  loop
    select r.bucket_key into v_key
    from ops.rate_limits r
    where r.bucket_key = any (v_keys) and not (r.bucket_key = any (v_tried))
    order by array_position(v_keys, r.bucket_key)
    for update skip locked
    limit 1;
    if v_key is null and cardinality(v_tried) = 0 then
      -- First use (the shards do not exist yet), or every shard held: make
      -- them and wait for the first in this turn's order (holding nothing).
      insert into ops.rate_limits (bucket_key, max_requests, window_seconds, slot_ms)
      select k, 1, p_windows[1], p_windows[1]::bigint * 50 from unnest(v_keys) k
      on conflict (bucket_key) do nothing;
      select r.bucket_key into v_key from ops.rate_limits r where r.bucket_key = v_keys[1] for update;
    end if;
    exit when v_key is null;
    v_tried := v_tried || v_key;
    v_shard := split_part(v_key, '#', 2)::integer;
    v_decision := ops.consume_rate_limits(
      v_key || p_bucket_keys[2:],
      (p_limits[1] / v_shards + case when v_shard < p_limits[1] % v_shards then 1 else 0 end) || p_limits[2:],
      p_windows, p_now);
    -- Admitted, or refused by another bucket (all-or-nothing): that is the answer.
    if (v_decision ->> 'allowed')::boolean or v_decision ->> 'key' <> v_key then
      return v_decision;
    end if;
    -- This shard is full: the org has room again when the first shard frees.
    if v_refusal is null or (v_decision ->> 'retry_after_seconds')::integer < (v_refusal ->> 'retry_after_seconds')::integer then
      v_refusal := v_decision;
    end if;
    v_key := null;
  end loop;
  return v_refusal || jsonb_build_object('key', p_bucket_keys[1], 'limit', p_limits[1]);
end;
$$;
comment on function ops.consume_rate_limits_sharded(text[], integer[], integer[], timestamptz, integer) is
  'ops.consume_rate_limits with the first bucket (the org:) split into p_shards rows whose limits add up to its limit: takes a free shard from a random start (skip locked), tries the next on a full one. Never admits more than the limit in any window; refuses only when every shard it can take without waiting is full.';

-- ---------------------------------------------------------------------------
-- Token counters: the same sliding window, weighted by tokens. A window of W
-- seconds is 20 slots of W/20; a counter keeps the settled tokens per recent
-- slot (ascending). Written when a usage row is inserted (ops.settle_usage,
-- in the usage migration), read by agent_begin_turn against the token quotas.
-- A busy org's counter is several rows (shards); every reader here sums the
-- slots of all the rows of its key in one snapshot.
-- ---------------------------------------------------------------------------
-- Tokens a counter holds in the window ending at p_now.
create function ops.tokens_used(p_counter_key text, p_window_seconds integer, p_now timestamptz default now())
returns bigint
language sql
stable
set search_path = ''
as $$
  select coalesce(sum(s.n), 0)::bigint
  from ops.token_counters c
  cross join lateral unnest(c.slot_ids, c.slot_tokens) as s (id, n)
  where c.counter_key = p_counter_key
    and s.id >= ((extract(epoch from p_now) * 1000)::bigint - p_window_seconds::bigint * 1000) / c.slot_ms;
$$;
comment on function ops.tokens_used(text, integer, timestamptz) is
  'Settled tokens of a token counter (the sum of its shards) in the window of p_window_seconds ending at p_now (open reservations not included).';

-- When a refused token quota has room for p_needed more tokens: settled
-- slots leave the window and open reservations expire (a reservation may
-- settle sooner; this is the latest that room appears without new traffic).
create function ops.tokens_retry_after(
  p_counter_key text,
  p_kind text,
  p_org_id uuid,
  p_user_id uuid,
  p_window_seconds integer,
  p_needed bigint,
  p_never_fits boolean,
  p_now timestamptz default now()
)
returns integer
language sql
stable
set search_path = ''
as $$
  select case when p_never_fits then p_window_seconds else coalesce((
    select greatest(ceil(min(f.at_ms) / 1000.0)::integer, 1)
    from (
      select x.at_ms, sum(x.n) over (order by x.at_ms rows unbounded preceding) as freed
      from (
        select (s.id + 1) * c.slot_ms + p_window_seconds::bigint * 1000 - (extract(epoch from p_now) * 1000)::bigint as at_ms,
               s.n
        from ops.token_counters c
        cross join lateral unnest(c.slot_ids, c.slot_tokens) as s (id, n)
        where c.counter_key = p_counter_key
          and s.id >= ((extract(epoch from p_now) * 1000)::bigint - p_window_seconds::bigint * 1000) / c.slot_ms
        union all
        select (extract(epoch from t.expires_at - p_now) * 1000)::bigint, t.tokens
        from ops.token_reservations t
        where t.expires_at > p_now
          and case p_kind when 'org' then t.org_id = p_org_id else t.user_id = p_user_id end
      ) x
    ) f
    where f.freed >= p_needed), p_window_seconds) end;
$$;
comment on function ops.tokens_retry_after(text, text, uuid, uuid, integer, bigint, boolean, timestamptz) is
  'Seconds until a token quota has room for p_needed more tokens (settled slots leaving the window, open reservations expiring); the whole window when the turn alone exceeds the quota.';

-- ---------------------------------------------------------------------------
-- Privileges of every function above, in one statement each (checked by
-- supabase/tests/database/004_privileges_inventory.test.sql): service_role
-- alone may execute them.
-- ---------------------------------------------------------------------------
revoke execute on function
  ops.consume_rate_limits(text[], integer[], integer[], timestamptz),
  ops.consume_rate_limits_sharded(text[], integer[], integer[], timestamptz, integer),
  ops.tokens_used(text, integer, timestamptz),
  ops.tokens_retry_after(text, text, uuid, uuid, integer, bigint, boolean, timestamptz)
from public, anon, authenticated;
grant execute on function
  ops.consume_rate_limits(text[], integer[], integer[], timestamptz),
  ops.consume_rate_limits_sharded(text[], integer[], integer[], timestamptz, integer),
  ops.tokens_used(text, integer, timestamptz),
  ops.tokens_retry_after(text, text, uuid, uuid, integer, bigint, boolean, timestamptz)
to service_role;
