-- agent-chat: the rate-limit decision, ops.consume_rate_limits, and the
-- token counters of the token quotas (same slot algorithm, weighted).
--
-- Algorithm: sliding window over sub-windows ("slots"). A bucket's window of
-- W seconds is cut into 100 slots of W/100 each; its row in ops.rate_limits
-- keeps, per recent slot, how many requests it admitted. A request is
-- admitted when the admissions counted in every slot that overlaps
-- (now - W, now] are fewer than the limit N.
--
-- Guarantee: never more than N admissions in any W-second interval, under
-- any concurrency (the rows are locked in one global order for the decision).
-- The price of the bounded row size: a request can be refused up to one
-- slot (W/100) earlier than an exact sliding log would refuse it, so a
-- bucket kept full admits at least 100/101 of what the exact log would.
-- (With 20 slots of W/20 it admitted 0.88 of the exact log's admissions over
-- 15 s of a bucket kept full by 16 clients; with 100, 1.00.)
-- All-or-nothing: the org:, user:, ip: and channel: buckets are decided
-- together, each with its own limit and window (a tenant policy may set them).
-- Every bucket is locked and evaluated first, and rows are written only when
-- all of them allow, so a refused request writes nothing.

create function ops.consume_rate_limits(
  p_bucket_keys text[],
  p_limits integer[],
  p_windows integer[],
  p_now timestamptz default now(),
  p_org_shards integer default 1
)
returns jsonb
language plpgsql
set search_path = ''
set plan_cache_mode = force_generic_plan
as $$
-- Two statements, each a cached generic plan with one primary-key lookup
-- per bucket: lock the buckets, then decide and (only when every bucket
-- allows) count the request in each, building the answer in the same
-- statement. A refusal runs a third, to say when to retry; a sharded org:
-- bucket adds one probe for its shard (1b).
declare
  v_now_ms bigint := (extract(epoch from p_now) * 1000)::bigint;
  v_decision jsonb;
  -- The buckets decided: p_bucket_keys, with a sharded first bucket
  -- replaced by the shard taken and its share of the limit.
  v_keys text[] := p_bucket_keys;
  v_limits integer[] := p_limits;
  -- K: the first bucket (the org:) split into K rows (at most 64, as the
  -- policy allows; a K above the limit leaves some shards a share of 0);
  -- 1 = one row.
  v_k integer := case when p_bucket_keys[1] is null then 1 else least(greatest(coalesce(p_org_shards, 1), 1), 64) end;
  v_start integer;
  v_probe integer := 0;
  v_shard integer;
  v_full text[] := '{}';
  v_refusal jsonb;
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

  if v_k > 1 then
    v_start := floor(random() * v_k)::integer;
  end if;

  -- 1. Lock every bucket in one global order (user:, ip:, org:, channel:
  -- last; then by key), so concurrent callers never deadlock and the busiest
  -- rows (org:, a global channel:) are held for the shortest time; a sharded
  -- org: bucket's row is taken after all of them (1b). One
  -- statement, row by row in that order: a bucket seen for the first time is
  -- inserted empty, an existing one is locked (ON CONFLICT DO UPDATE locks
  -- the row, the latest version whoever committed it, even when its WHERE
  -- updates nothing).
  insert into ops.rate_limits as r (bucket_key, max_requests, window_seconds, slot_ms)
  select t.key, t.lim, t.win, t.win::bigint * 10
  from unnest(p_bucket_keys, p_limits, p_windows) with ordinality as t (key, lim, win, pos)
  where t.key is not null and (v_k = 1 or t.pos > 1)
  order by case split_part(t.key, ':', 1) when 'user' then 1 when 'ip' then 2 when 'org' then 3 when 'channel' then 4 else 0 end,
           t.key collate "C"
  on conflict (bucket_key) do update set updated_at = r.updated_at where false;

  loop
  -- 1b. A sharded org: bucket (K > 1, ops.agent_policies.org_bucket_shards)
  -- is K rows org:<id>#K.0 .. #K.K-1 whose limits add up to its limit (K in
  -- the key: a turn that read another K never touches this layout's rows).
  -- The turn takes one no other turn holds, trying them from a random start
  -- with SKIP LOCKED (never waiting), so K turns of one busy org decide at
  -- once; a full one sends it on to the next. Only when none could be taken
  -- (all held, or not made yet) does it wait, for its first: it then holds
  -- its other buckets but no shard, and a turn holding a shard waits for
  -- nothing more, so this cannot deadlock.
  if v_k > 1 then
    v_shard := null;
    if v_refusal is not null then
      -- The shard taken was full: one statement finds the next one (from
      -- the random start on) that has room and no other turn holds; the
      -- shards this turn found full are left out. No such shard: refused.
      select split_part(r.bucket_key, '.', -1)::integer
      into v_shard
      from ops.rate_limits r
      where r.bucket_key = any (array(select p_bucket_keys[1] || '#' || v_k || '.' || s from generate_series(0, v_k - 1) s))
        and r.bucket_key <> all (v_full)
        and not r.retired
        and (select coalesce(sum(x.n), 0)
             from unnest(r.slot_ids, r.slot_counts) as x (id, n)
             where case when r.slot_ms = p_windows[1]::bigint * 10
                        then x.id >= (v_now_ms - p_windows[1]::bigint * 1000) / (p_windows[1]::bigint * 10)
                        else (x.id + 1) * r.slot_ms > v_now_ms - r.window_seconds::bigint * 1000 end)
            < p_limits[1] / v_k + case when split_part(r.bucket_key, '.', -1)::integer < p_limits[1] % v_k then 1 else 0 end
      order by (split_part(r.bucket_key, '.', -1)::integer - v_start + v_k) % v_k
      limit 1
      for update skip locked;
      exit when v_shard is null;
    end if;
    while v_shard is null and v_probe < v_k loop
      v_shard := (v_start + v_probe) % v_k;
      v_probe := v_probe + 1;
      perform from ops.rate_limits r where r.bucket_key = p_bucket_keys[1] || '#' || v_k || '.' || v_shard for update skip locked;
      if not found then
        v_shard := null;
      end if;
    end loop;
    if v_shard is null then
      -- No shard could be taken: every row of the layout is held by another
      -- turn, or missing (never made, or purged while idle; unseen rows would
      -- otherwise never be used). The missing ones are made, in key order
      -- (this turn holds no shard, so waiting for another's insert of the
      -- same key cannot deadlock), and the turn takes one of those it made;
      -- none made: it waits for its first.
      with made as (
        insert into ops.rate_limits as r (bucket_key, max_requests, window_seconds, slot_ms)
        select p_bucket_keys[1] || '#' || v_k || '.' || s, greatest(p_limits[1] / v_k, 1), p_windows[1], p_windows[1]::bigint * 10
        from generate_series(0, v_k - 1) s
        order by (p_bucket_keys[1] || '#' || v_k || '.' || s) collate "C"
        on conflict (bucket_key) do nothing
        returning split_part(r.bucket_key, '.', -1)::integer as shard
      )
      select m.shard into v_shard from made m order by (m.shard - v_start + v_k) % v_k limit 1;
      if v_shard is null then
        v_shard := v_start;
        insert into ops.rate_limits as r (bucket_key, max_requests, window_seconds, slot_ms)
        values (p_bucket_keys[1] || '#' || v_k || '.' || v_shard, greatest(p_limits[1] / v_k, 1), p_windows[1], p_windows[1]::bigint * 10)
        on conflict (bucket_key) do update set updated_at = r.updated_at where false;
      end if;
    end if;
    v_keys[1] := p_bucket_keys[1] || '#' || v_k || '.' || v_shard;
    v_limits[1] := p_limits[1] / v_k + case when v_shard < p_limits[1] % v_k then 1 else 0 end;
  end if;

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
    select t.key, t.lim, t.win, t.slot_ms, n.now_ms / t.slot_ms as slot, k.used, r.retired,
           case when r.slot_ms = t.slot_ms then r.slot_ids[k.dropped + 1:]
                when k.used > 0 then array[n.now_ms / t.slot_ms] else '{}' end as ids,
           case when r.slot_ms = t.slot_ms then r.slot_counts[k.dropped + 1:]
                when k.used > 0 then array[k.used] else '{}' end as counts
    from (select u.key, u.lim, u.win, u.win::bigint * 10 as slot_ms
          from unnest(v_keys, v_limits, p_windows) as u (key, lim, win)
          where u.key is not null) t
    -- One primary-key lookup per bucket (offset 0 keeps it a nested loop,
    -- whatever the table's size and statistics).
    cross join lateral (
      select r.slot_ms, r.window_seconds, r.slot_ids, r.slot_counts, r.retired
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
    where not exists (select 1 from b f where f.used >= f.lim or f.retired)
    on conflict (bucket_key) do update
    set max_requests = excluded.max_requests, window_seconds = excluded.window_seconds, slot_ms = excluded.slot_ms,
        slot_ids = excluded.slot_ids, slot_counts = excluded.slot_counts, slot_total = excluded.slot_total,
        updated_at = excluded.updated_at
  )
  select jsonb_build_object(
           'allowed', true,
           'scope', split_part(e.key, ':', 1),
           -- A shard answers for the org: the org's key and whole limit, with
           -- the shard's remaining (never more than the org has left).
           'key', case when v_k > 1 and e.key = v_keys[1] then p_bucket_keys[1] else e.key end,
           'limit', case when v_k > 1 and e.key = v_keys[1] then p_limits[1] else e.lim end,
           'window_seconds', e.win,
           'remaining', e.lim - e.used - 1,
           -- Room grows again when the oldest counted slot (or this one) leaves the window.
           'reset_seconds', ceil(greatest((coalesce(e.ids[1], e.slot) + 1) * e.slot_ms + e.win::bigint * 1000 - v_now_ms, 1) / 1000.0)::integer,
           'retry_after_seconds', 0)
  from b e
  where not exists (select 1 from b f where f.used >= f.lim or f.retired)
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
    -- A row's slots leave in its own units: its slot width and window (a
    -- row decided with another window keeps them until they leave that one).
    select r.bucket_key as key, q.lim, q.win, r.slot_ms as row_slot_ms, r.window_seconds as row_win, k.used, k.ids, k.counts
    from ops.rate_limits r
    cross join lateral (
      select v_limits[i] as lim, p_windows[i] as win, p_windows[i]::bigint * 10 as slot_ms
      from array_position(v_keys, r.bucket_key) as i
    ) q
    cross join lateral (
      select coalesce(sum(s.n), 0)::integer as used, array_agg(s.id) as ids, array_agg(s.n) as counts
      from unnest(r.slot_ids, r.slot_counts) as s (id, n)
      where case when r.slot_ms = q.slot_ms
                 then s.id >= (v_now_ms - q.win::bigint * 1000) / q.slot_ms
                 else (s.id + 1) * r.slot_ms > v_now_ms - r.window_seconds::bigint * 1000 end
    ) k
    where r.bucket_key = any (v_keys) and (k.used >= q.lim or r.retired)
  ) f
  cross join lateral (
    select greatest(ceil(coalesce(min((x.id + 1) * f.row_slot_ms + f.row_win::bigint * 1000 - v_now_ms)
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
  -- No bucket at all: nothing to refuse. Refused by a bucket other than a
  -- shard: that is the answer (all-or-nothing).
  if v_k = 1 or v_decision ->> 'key' is distinct from v_keys[1] then
    return coalesce(v_decision, '{"allowed": true, "retry_after_seconds": 0}'::jsonb);
  end if;
  -- This shard is full: the turn looks for another with room that it can
  -- take without waiting (1b; it holds a shard now, so it may not wait for
  -- another). A shard held by another turn is passed over, so the org may
  -- refuse up to K - 1 admissions of a window early, never admit one too
  -- many. The Retry-After is that of the full shards this turn decided on
  -- (the one that frees first; another shard may free sooner). A refused
  -- turn costs one search over the K rows, not K decisions.
  if v_refusal is null or (v_decision ->> 'retry_after_seconds')::integer < (v_refusal ->> 'retry_after_seconds')::integer then
    v_refusal := v_decision;
  end if;
  v_full := v_full || v_keys[1];
  exit when cardinality(v_full) >= v_k;
  end loop;
  -- Every shard this turn could take was full: the refusal names the org
  -- bucket and its limit, not a shard.
  return v_refusal || jsonb_build_object('key', p_bucket_keys[1], 'limit', p_limits[1]);
end;
$$;
comment on function ops.consume_rate_limits(text[], integer[], integer[], timestamptz, integer) is
  'All-or-nothing sliding-window decision over several buckets, each with its limit and window: locks them in a fixed order, admits only if every bucket has room, then counts the request in each. Never more than N admissions in any W seconds per bucket; a refusal writes nothing. Returns one bucket: {allowed, scope, key, limit, window_seconds, remaining, reset_seconds, retry_after_seconds}, the one with the least room left when admitted, the first full one in lock order when refused. p_org_shards = K > 1: the first bucket (the org:) is K rows org:<key>#K.0 .. #K.K-1 whose limits add up to its limit; a turn takes one no other turn holds (skip locked, from a random start), so a busy org''s turns decide K at once, and is refused only when every shard it could take is full (the refusal names the first bucket and its whole limit).';


-- ---------------------------------------------------------------------------
-- Changing K (org_bucket_shards, by an operator or ops.autoshard_org_buckets)
-- moves the admissions still in the window into the new layout, so a change
-- never forgets one: the in-window counts of the old rows, slot by slot
-- (oldest first), fill the new rows up to their shares of the smaller of the
-- limit (the policy's, else an upper bound from what the rows were decided
-- with) and the admissions moved, T. A row's share grows with the limit, so
-- shares of T are within the shares of any limit of at least T (the
-- environment's included, which this function never sees): the new rows
-- admit at most limit - T more. Filling up to the shares of a limit that is
-- too high would not be: the first rows would take more than their real
-- share and the others would still admit theirs. What exceeds the limit
-- stays on the last row, which refuses until it leaves the window. The old layout's rows (every one of them, made if missing) stay as
-- retired rows that admit nothing: a turn that read the old K before the
-- change committed refuses instead of admitting on a row nobody counts. The
-- K is in the shard keys (org:<id>#K.i), so old and new rows never mix.
-- Rows are locked in key order; a turn holding a shard waits for nothing
-- more, so this cannot deadlock with turns.
-- ---------------------------------------------------------------------------
create function ops.reshard_org_bucket(
  p_org_id uuid,
  p_shards integer,
  p_old_shards integer default null,
  p_limit integer default null,
  p_window integer default null,
  p_now timestamptz default now()
)
returns integer
language plpgsql
set search_path = ''
as $$
declare
  v_key constant text := 'org:' || p_org_id;
  v_old integer := least(greatest(coalesce(p_old_shards, 1), 1), 64);
  v_layout_old text[];
  v_candidates text[];
  v_now_ms bigint := (extract(epoch from p_now) * 1000)::bigint;
  v_limit integer;
  -- The limit the moved admissions are spread by: least(limit, T).
  v_fill integer;
  v_window integer;
  v_slot_ms bigint;
  v_k integer;
  v_layout text[];
  v_ids bigint[];
  v_counts integer[];
  v_i integer;
  v_shard integer := 0;
  v_room integer;
  v_take integer;
  v_left integer;
  v_out_shard integer[] := '{}';
  v_out_id bigint[] := '{}';
  v_out_n integer[] := '{}';
begin
  v_k := least(greatest(coalesce(p_shards, 1), 1), 64);
  if v_k = v_old then
    return v_k;
  end if;
  v_layout_old := case when v_old = 1 then array[v_key]
                       else array(select v_key || '#' || v_old || '.' || s from generate_series(0, v_old - 1) s) end;
  v_candidates := v_layout_old || case when v_old = 1 then '{}'::text[] else array[v_key] end;
  v_layout := case when v_k = 1 then array[v_key]
                   else array(select v_key || '#' || v_k || '.' || s from generate_series(0, v_k - 1) s) end;
  perform from ops.rate_limits r where r.bucket_key = any (v_candidates || v_layout) order by r.bucket_key collate "C" for update;
  -- The limit to share out: the policy's, else an upper bound from what the
  -- live rows were decided with (a shard's share is at most limit / K + 1);
  -- the admissions are spread by least(limit, T) below, safe for either.
  select coalesce(p_limit, max(case when r.bucket_key = v_key then r.max_requests
                                    else (r.max_requests + 1) * split_part(split_part(r.bucket_key, '#', 2), '.', 1)::integer end)),
         coalesce(p_window, max(r.window_seconds))
  into v_limit, v_window
  from ops.rate_limits r where r.bucket_key = any (v_candidates || v_layout) and not r.retired;
  if v_limit is null or v_window is null then
    -- Nothing decided yet and no limit to share: empty rows, the turns set them.
    v_limit := coalesce(v_limit, v_k);
    v_window := coalesce(v_window, 60);
  end if;
  v_slot_ms := v_window::bigint * 10;
  -- The admissions still in the window, by slot of the current window
  -- (a row decided with another window counts in the current slot).
  select coalesce(array_agg(x.id order by x.id), '{}'), coalesce(array_agg(x.n order by x.id), '{}')
  into v_ids, v_counts
  from (
    select case when r.slot_ms = v_slot_ms then s.id else v_now_ms / v_slot_ms end as id, sum(s.n)::integer as n
    from ops.rate_limits r
    cross join lateral unnest(r.slot_ids, r.slot_counts) as s (id, n)
    where r.bucket_key = any (v_candidates || v_layout) and not r.retired
      and case when r.slot_ms = v_slot_ms then s.id >= (v_now_ms - v_window::bigint * 1000) / v_slot_ms
               else (s.id + 1) * r.slot_ms > v_now_ms - r.window_seconds::bigint * 1000 end
    group by 1
  ) x;
  v_fill := least(v_limit, (select coalesce(sum(c), 0)::integer from unnest(v_counts) c));
  v_room := v_fill / v_k + case when 0 < v_fill % v_k then 1 else 0 end;
  for v_i in 1 .. coalesce(array_length(v_ids, 1), 0) loop
    v_left := v_counts[v_i];
    while v_left > 0 loop
      v_take := case when v_shard = v_k - 1 then v_left else least(v_left, v_room) end;
      if v_take > 0 then
        v_out_shard := v_out_shard || v_shard;
        v_out_id := v_out_id || v_ids[v_i];
        v_out_n := v_out_n || v_take;
      end if;
      v_left := v_left - v_take;
      v_room := v_room - v_take;
      if v_room <= 0 and v_shard < v_k - 1 then
        v_shard := v_shard + 1;
        v_room := v_fill / v_k + case when v_shard < v_fill % v_k then 1 else 0 end;
      end if;
    end loop;
  end loop;
  -- The new rows with their counts; every other row of the old layout retired.
  insert into ops.rate_limits as r (bucket_key, max_requests, window_seconds, slot_ms, slot_ids, slot_counts, slot_total, retired, updated_at)
  select x.key, x.lim, v_window, v_slot_ms, x.ids, x.counts, x.total, x.retired, p_now
  from (
    select l.key, v_limit / v_k + case when l.pos - 1 < v_limit % v_k then 1 else 0 end as lim,
           coalesce(t.ids, '{}') as ids, coalesce(t.counts, '{}') as counts, coalesce(t.total, 0) as total, false as retired
    from unnest(v_layout) with ordinality as l (key, pos)
    left join lateral (
      select array_agg(o.id order by o.id) as ids, array_agg(o.n order by o.id) as counts, sum(o.n)::integer as total
      from unnest(v_out_shard, v_out_id, v_out_n) as o (shard, id, n) where o.shard = l.pos - 1
    ) t on true
    union all
    select c.key, 1, '{}', '{}', 0, true
    from unnest(v_candidates) as c (key)
    where not (c.key = any (v_layout))
  ) x
  order by x.key collate "C"
  on conflict (bucket_key) do update
  set max_requests = excluded.max_requests, window_seconds = excluded.window_seconds, slot_ms = excluded.slot_ms,
      slot_ids = excluded.slot_ids, slot_counts = excluded.slot_counts, slot_total = excluded.slot_total,
      retired = excluded.retired, updated_at = excluded.updated_at;
  return v_k;
end;
$$;
comment on function ops.reshard_org_bucket(uuid, integer, integer, integer, integer, timestamptz) is
  'Moves an org: bucket''s admissions still in its window from the layout of p_old_shards rows into p_shards rows (1: the one row org:<id>; K: org:<id>#K.0 .. #K.K-1), each filled up to its share of the limit, and retires the old rows, so changing org_bucket_shards never forgets an admission and a turn that read the old K admits nothing. Run by the ops.agent_policies trigger; returns the K applied.';

-- The K in force for an org before and after a policy change (the tenant's
-- row, else the global row, else 1), applied to its bucket; a global change
-- applies to every org with bucket rows and no K of its own.
create function ops.policy_reshard()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
  v_org uuid := case when tg_op = 'DELETE' then old.org_id else new.org_id end;
  v_new_global integer := (select max(p.org_bucket_shards) from ops.agent_policies p where p.org_id is null);
  v_old_global integer := v_new_global;
begin
  if (tg_op = 'INSERT' and new.org_bucket_shards is null)
     or (tg_op = 'DELETE' and old.org_bucket_shards is null)
     or (tg_op = 'UPDATE' and new.org_bucket_shards is not distinct from old.org_bucket_shards) then
    return null;
  end if;
  if v_org is null then
    v_old_global := case when tg_op = 'INSERT' then null else old.org_bucket_shards end;
  end if;
  perform ops.reshard_org_bucket(o.org_id,
            coalesce(o.own, v_new_global, 1),
            coalesce(case when v_org is null then o.own
                          when tg_op = 'INSERT' then null else old.org_bucket_shards end, v_old_global, 1),
            coalesce((select max(p.org_max_requests) from ops.agent_policies p where p.org_id = o.org_id),
                     (select max(p.org_max_requests) from ops.agent_policies p where p.org_id is null)),
            coalesce((select max(p.org_window_seconds) from ops.agent_policies p where p.org_id = o.org_id),
                     (select max(p.org_window_seconds) from ops.agent_policies p where p.org_id is null)))
  from (
    select x.org_id, (select max(p.org_bucket_shards) from ops.agent_policies p where p.org_id = x.org_id) as own
    from (select v_org as org_id where v_org is not null
          union
          select distinct split_part(split_part(r.bucket_key, ':', 2), '#', 1)::uuid
          from ops.rate_limits r
          where v_org is null and r.bucket_key like 'org:%' and not r.retired
            and split_part(split_part(r.bucket_key, ':', 2), '#', 1) ~ '^[0-9a-f-]{36}$') x
  ) o
  where v_org is not null or o.own is null
  order by o.org_id;
  return null;
end;
$$;
comment on function ops.policy_reshard() is
  'Trigger of ops.agent_policies: when org_bucket_shards changes, re-lays the affected org: buckets out in the new K rows (ops.reshard_org_bucket).';
create trigger agent_policies_reshard
  after insert or update of org_bucket_shards or delete on ops.agent_policies
  for each row execute function ops.policy_reshard();

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
  ops.consume_rate_limits(text[], integer[], integer[], timestamptz, integer),
  ops.reshard_org_bucket(uuid, integer, integer, integer, integer, timestamptz),
  ops.policy_reshard(),
  ops.tokens_used(text, integer, timestamptz),
  ops.tokens_retry_after(text, text, uuid, uuid, integer, bigint, boolean, timestamptz)
from public, anon, authenticated;
grant execute on function
  ops.consume_rate_limits(text[], integer[], integer[], timestamptz, integer),
  ops.reshard_org_bucket(uuid, integer, integer, integer, integer, timestamptz),
  ops.policy_reshard(),
  ops.tokens_used(text, integer, timestamptz),
  ops.tokens_retry_after(text, text, uuid, uuid, integer, bigint, boolean, timestamptz)
to service_role;
