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
as $$
declare
  v_now_ms bigint := (extract(epoch from p_now) * 1000)::bigint;
  v_window_ms bigint;
  v_slot_ms bigint;
  v_min_slot bigint;
  v_slot bigint;
  v_keys text[];
  v_limits integer[];
  v_windows integer[];
  v_window integer;
  v_kept text[] := '{}';      -- per bucket: pruned slot ids, as array text
  v_kept_counts text[] := '{}';
  v_used integer[] := '{}';
  v_key text;
  v_limit integer;
  v_row_slot_ms bigint;
  v_row_window integer;
  v_ids bigint[];
  v_counts integer[];
  v_total integer;
  v_first integer;
  v_n integer;
  v_freed integer := 0;
  v_retry_ms bigint := 0;
  v_best integer;
  v_best_remaining integer;
  v_reset_ms bigint;
  v_buckets jsonb := '[]'::jsonb;
  i integer;
  j integer;
begin
  if coalesce(array_length(p_bucket_keys, 1), 0) <> coalesce(array_length(p_limits, 1), 0)
     or coalesce(array_length(p_bucket_keys, 1), 0) <> coalesce(array_length(p_windows, 1), 0) then
    raise exception 'one limit and one window per bucket key' using errcode = '22023';
  end if;

  -- One global lock order (user:, ip:, org:, channel: last; then by key) so
  -- that concurrent callers never deadlock, and the busiest rows (org:, a
  -- global channel:) are held for the shortest time.
  select array_agg(t.key order by case split_part(t.key, ':', 1) when 'user' then 1 when 'ip' then 2 when 'org' then 3 when 'channel' then 4 else 0 end, t.key collate "C"),
         array_agg(t.lim order by case split_part(t.key, ':', 1) when 'user' then 1 when 'ip' then 2 when 'org' then 3 when 'channel' then 4 else 0 end, t.key collate "C"),
         array_agg(t.win order by case split_part(t.key, ':', 1) when 'user' then 1 when 'ip' then 2 when 'org' then 3 when 'channel' then 4 else 0 end, t.key collate "C")
  into v_keys, v_limits, v_windows
  from unnest(p_bucket_keys, p_limits, p_windows) as t (key, lim, win)
  where t.key is not null;

  -- Phase 1: lock and evaluate every bucket; stop at the first full one.
  for i in 1 .. coalesce(array_length(v_keys, 1), 0) loop
    v_key := v_keys[i];
    v_limit := v_limits[i];
    v_window := v_windows[i];
    if v_limit is null or v_limit < 1 then
      raise exception 'limit of % must be a positive integer', v_key using errcode = '22023';
    end if;
    if v_window is null or v_window < 1 then
      raise exception 'window of % must be a positive integer', v_key using errcode = '22023';
    end if;
    v_window_ms := v_window::bigint * 1000;
    v_slot_ms := v_window::bigint * 50; -- W/20, exact for whole seconds
    v_min_slot := (v_now_ms - v_window_ms) / v_slot_ms;
    v_slot := v_now_ms / v_slot_ms;
    select r.slot_ms, r.window_seconds, r.slot_ids, r.slot_counts, r.slot_total
    into v_row_slot_ms, v_row_window, v_ids, v_counts, v_total
    from ops.rate_limits r where r.bucket_key = v_key for update;
    if not found then
      insert into ops.rate_limits (bucket_key, max_requests, window_seconds, slot_ms)
      values (v_key, v_limit, v_window, v_slot_ms)
      on conflict (bucket_key) do nothing;
      select r.slot_ms, r.window_seconds, r.slot_ids, r.slot_counts, r.slot_total
      into v_row_slot_ms, v_row_window, v_ids, v_counts, v_total
      from ops.rate_limits r where r.bucket_key = v_key for update;
    end if;
    v_n := coalesce(array_length(v_ids, 1), 0);
    if v_row_slot_ms = v_slot_ms then
      -- Slots are ascending: drop those that left the window from the front.
      v_first := 1;
      while v_first <= v_n and v_ids[v_first] < v_min_slot loop
        v_total := v_total - v_counts[v_first];
        v_first := v_first + 1;
      end loop;
      if v_first > v_n then
        v_ids := '{}';
        v_counts := '{}';
      elsif v_first > 1 then
        v_ids := v_ids[v_first:v_n];
        v_counts := v_counts[v_first:v_n];
      end if;
    else
      -- The window changed: whatever may still sit in the old window is
      -- counted in the current slot (over-counting, never under).
      v_total := 0;
      for j in 1 .. v_n loop
        if (v_ids[j] + 1) * v_row_slot_ms > v_now_ms - v_row_window::bigint * 1000 then
          v_total := v_total + v_counts[j];
        end if;
      end loop;
      v_ids := case when v_total > 0 then array[v_slot] else '{}' end;
      v_counts := case when v_total > 0 then array[v_total] else '{}' end;
    end if;

    if v_total >= v_limit then
      -- Refused: nothing was written. Retry when enough admissions have left.
      v_n := coalesce(array_length(v_ids, 1), 0);
      for j in 1 .. v_n loop
        v_freed := v_freed + v_counts[j];
        if v_total - v_freed < v_limit then
          v_retry_ms := (v_ids[j] + 1) * v_slot_ms + v_window_ms - v_now_ms;
          exit;
        end if;
      end loop;
      return jsonb_build_object(
        'allowed', false,
        'scope', split_part(v_key, ':', 1),
        'key', v_key,
        'limit', v_limit,
        'window_seconds', v_window,
        'remaining', 0,
        'reset_seconds', greatest(ceil(v_retry_ms / 1000.0)::integer, 1),
        'retry_after_seconds', greatest(ceil(v_retry_ms / 1000.0)::integer, 1)
      );
    end if;
    v_kept := v_kept || v_ids::text;
    v_kept_counts := v_kept_counts || v_counts::text;
    v_used := v_used || v_total;
  end loop;

  -- Phase 2: every bucket allows; count the request in each.
  for i in 1 .. coalesce(array_length(v_keys, 1), 0) loop
    v_window_ms := v_windows[i]::bigint * 1000;
    v_slot_ms := v_windows[i]::bigint * 50;
    v_slot := v_now_ms / v_slot_ms;
    v_ids := v_kept[i]::bigint[];
    v_counts := v_kept_counts[i]::integer[];
    v_n := coalesce(array_length(v_ids, 1), 0);
    -- Room grows again when the oldest counted slot (or this one) leaves the window.
    v_reset_ms := greatest((coalesce(v_ids[1], v_slot) + 1) * v_slot_ms + v_window_ms - v_now_ms, 1);
    if v_n > 0 and v_ids[v_n] = v_slot then
      v_counts[v_n] := v_counts[v_n] + 1;
    else
      v_ids := v_ids || v_slot;
      v_counts := v_counts || 1;
    end if;
    update ops.rate_limits r
    set max_requests = v_limits[i],
        window_seconds = v_windows[i],
        slot_ms = v_slot_ms,
        slot_ids = v_ids,
        slot_counts = v_counts,
        slot_total = v_used[i] + 1,
        updated_at = p_now
    where r.bucket_key = v_keys[i];
    v_buckets := v_buckets || jsonb_build_object(
      'key', v_keys[i],
      'scope', split_part(v_keys[i], ':', 1),
      'limit', v_limits[i],
      'window_seconds', v_windows[i],
      'remaining', greatest(v_limits[i] - v_used[i] - 1, 0),
      'reset_seconds', ceil(v_reset_ms / 1000.0)::integer
    );
    -- The bucket with the least headroom is the one clients should watch.
    if v_best is null or v_limits[i] - v_used[i] - 1 < v_best_remaining then
      v_best := i;
      v_best_remaining := v_limits[i] - v_used[i] - 1;
    end if;
  end loop;

  return jsonb_build_object(
    'allowed', true,
    'scope', v_buckets -> (v_best - 1) ->> 'scope',
    'key', v_buckets -> (v_best - 1) ->> 'key',
    'limit', (v_buckets -> (v_best - 1) ->> 'limit')::integer,
    'window_seconds', (v_buckets -> (v_best - 1) ->> 'window_seconds')::integer,
    'remaining', (v_buckets -> (v_best - 1) ->> 'remaining')::integer,
    'reset_seconds', (v_buckets -> (v_best - 1) ->> 'reset_seconds')::integer,
    'retry_after_seconds', 0,
    'buckets', v_buckets
  );
end;
$$;
comment on function ops.consume_rate_limits(text[], integer[], integer[], timestamptz) is
  'All-or-nothing sliding-window decision over several buckets, each with its limit and window: locks them in a fixed order, admits only if every bucket has room, then counts the request in each. Never more than N admissions in any W seconds per bucket; a refusal writes nothing.';

revoke execute on function ops.consume_rate_limits(text[], integer[], integer[], timestamptz) from public, anon, authenticated;
grant execute on function ops.consume_rate_limits(text[], integer[], integer[], timestamptz) to service_role;

-- ---------------------------------------------------------------------------
-- Token counters: the same sliding window, weighted by tokens. A window of W
-- seconds is 20 slots of W/20; a counter keeps the settled tokens per recent
-- slot (ascending). Written when a usage row is inserted (settlement), read
-- by agent_begin_turn against the token quotas.
-- ---------------------------------------------------------------------------
create function ops.add_tokens(
  p_counter_key text,
  p_window_seconds integer,
  p_tokens bigint,
  p_at timestamptz default now()
)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_slot_ms bigint := p_window_seconds::bigint * 50;
  v_slot bigint := (extract(epoch from p_at) * 1000)::bigint / v_slot_ms;
  v_min_slot bigint := ((extract(epoch from greatest(p_at, now())) * 1000)::bigint - p_window_seconds::bigint * 1000) / v_slot_ms;
begin
  if p_tokens is null or p_tokens <= 0 or v_slot < v_min_slot then
    return;
  end if;
  insert into ops.token_counters as c (counter_key, slot_ms, slot_ids, slot_tokens, updated_at)
  values (p_counter_key, v_slot_ms, array[v_slot], array[p_tokens], now())
  on conflict (counter_key) do update
  set (slot_ids, slot_tokens) = (
        select coalesce(array_agg(x.id order by x.id), '{}'), coalesce(array_agg(x.n order by x.id), '{}')
        from (
          select u.id, sum(u.n)::bigint as n
          from unnest(c.slot_ids || v_slot, c.slot_tokens || p_tokens) as u (id, n)
          where u.id >= v_min_slot
          group by u.id
        ) x),
      updated_at = now();
end;
$$;
comment on function ops.add_tokens(text, integer, bigint, timestamptz) is
  'Adds settled tokens to a token counter (org:<id>:minute|day, user:<id>:minute|day) in the slot of p_at, dropping slots that left the window.';
revoke execute on function ops.add_tokens(text, integer, bigint, timestamptz) from public, anon, authenticated;
grant execute on function ops.add_tokens(text, integer, bigint, timestamptz) to service_role;

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
  'Settled tokens of a token counter in the window of p_window_seconds ending at p_now (open reservations not included).';
revoke execute on function ops.tokens_used(text, integer, timestamptz) from public, anon, authenticated;
grant execute on function ops.tokens_used(text, integer, timestamptz) to service_role;

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
revoke execute on function ops.tokens_retry_after(text, text, uuid, uuid, integer, bigint, boolean, timestamptz) from public, anon, authenticated;
grant execute on function ops.tokens_retry_after(text, text, uuid, uuid, integer, bigint, boolean, timestamptz) to service_role;
