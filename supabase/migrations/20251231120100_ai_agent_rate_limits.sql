-- agent-chat: the rate-limit decision, ops.consume_rate_limits.
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
-- All-or-nothing: the org:, user: and ip: buckets are decided together.
-- Every bucket is locked and evaluated first, and rows are written only when
-- all of them allow, so a refused request writes nothing.

create function ops.consume_rate_limits(
  p_bucket_keys text[],
  p_limits integer[],
  p_window_seconds integer,
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
  if p_window_seconds is null or p_window_seconds < 1 then
    raise exception 'window_seconds must be a positive integer' using errcode = '22023';
  end if;
  if coalesce(array_length(p_bucket_keys, 1), 0) <> coalesce(array_length(p_limits, 1), 0) then
    raise exception 'one limit per bucket key' using errcode = '22023';
  end if;
  v_window_ms := p_window_seconds::bigint * 1000;
  v_slot_ms := p_window_seconds::bigint * 50; -- W/20, exact for whole seconds
  v_min_slot := (v_now_ms - v_window_ms) / v_slot_ms;
  v_slot := v_now_ms / v_slot_ms;

  -- One global lock order (user:, ip:, org: last; then by key) so that
  -- concurrent callers never deadlock, and the busiest row (org:) is held
  -- for the shortest time.
  select array_agg(t.key order by case split_part(t.key, ':', 1) when 'user' then 1 when 'ip' then 2 when 'org' then 3 else 0 end, t.key collate "C"),
         array_agg(t.lim order by case split_part(t.key, ':', 1) when 'user' then 1 when 'ip' then 2 when 'org' then 3 else 0 end, t.key collate "C")
  into v_keys, v_limits
  from unnest(p_bucket_keys, p_limits) as t (key, lim)
  where t.key is not null;

  -- Phase 1: lock and evaluate every bucket; stop at the first full one.
  for i in 1 .. coalesce(array_length(v_keys, 1), 0) loop
    v_key := v_keys[i];
    v_limit := v_limits[i];
    if v_limit is null or v_limit < 1 then
      raise exception 'limit of % must be a positive integer', v_key using errcode = '22023';
    end if;
    select r.slot_ms, r.window_seconds, r.slot_ids, r.slot_counts, r.slot_total
    into v_row_slot_ms, v_row_window, v_ids, v_counts, v_total
    from ops.rate_limits r where r.bucket_key = v_key for update;
    if not found then
      insert into ops.rate_limits (bucket_key, max_requests, window_seconds, slot_ms)
      values (v_key, v_limit, p_window_seconds, v_slot_ms)
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
        window_seconds = p_window_seconds,
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
    'remaining', (v_buckets -> (v_best - 1) ->> 'remaining')::integer,
    'reset_seconds', (v_buckets -> (v_best - 1) ->> 'reset_seconds')::integer,
    'retry_after_seconds', 0,
    'buckets', v_buckets
  );
end;
$$;
comment on function ops.consume_rate_limits(text[], integer[], integer, timestamptz) is
  'All-or-nothing sliding-window decision over several buckets: locks them in a fixed order, admits only if every bucket has room, then counts the request in each. Never more than N admissions in any W seconds per bucket; a refusal writes nothing.';

revoke execute on function ops.consume_rate_limits(text[], integer[], integer, timestamptz) from public, anon, authenticated;
grant execute on function ops.consume_rate_limits(text[], integer[], integer, timestamptz) to service_role;
