-- Migration 7: latency percentiles in SQL, over any bucket.
-- Idempotent (create or replace throughout), so schema/postgres.sql can run it again safely.
--
-- `metric_rollups.latency_sketch` holds a DDSketch of the window's call latencies (milliseconds)
-- in the canonical form metrics/sketch.ts writes:
--   {"relative_accuracy": 0.01, "zero_count": n, "keys": [k, ...], "counts": [c, ...],
--    "min_ms": x | null, "max_ms": y | null}
-- keys ascending, counts > 0. It is the positive store of a @datadog/sketches-js DDSketch with a
-- logarithmic index mapping (relative accuracy alpha = 0.01, so gamma = (1 + alpha) / (1 - alpha), index offset 0):
-- a value v > 0 lies in the bin of key ceil(log_gamma v), and the bin's value is
-- 2^(key / m) * 2 / (1 + gamma) with m = ln 2 / ln(1 + (gamma - 1)) - each a constant below, written with
-- 17 significant digits so it is the same double the library computes. Latencies are never
-- negative (the library counts a negative latency as 0), so there is no negative store; values
-- at or below the mapping's smallest (~ 1.1e-308) are in `zero_count`.
--
-- Merging adds the counts key by key (and zero_count; min and max are the least and greatest),
-- as LatencySketch.mergeFrom does, so a merged sketch is the sketch of all the merged calls and
-- its quantiles keep the relative-accuracy guarantee: the value reported for quantile q is within
-- 1% of the latency of rank floor(q * (n - 1)) among the n calls. The quantile walks the bins as
-- DDSketch.getValueAtQuantile does: rank = q * (n - 1); 0 when rank < zero_count, else the value
-- of the first key whose running count exceeds rank - zero_count. The bin chosen is the library's
-- exactly (integer counts, the same floating-point operations in the same order); its value comes
-- from PostgreSQL's power() (the C library's pow), which differs from JavaScript's Math.pow by at
-- most one unit in the last place for some keys - 1e-16 relative, far inside the 1% guarantee.

-- The value the bin of `key` stands for (Infinity past the largest double, as the library gives).
create or replace function latency_sketch_value(key integer)
returns double precision
language sql immutable strict parallel safe as $$
  select case
           when key / 34.656203751888171::double precision >= 1024 then 'Infinity'::double precision
           else power(2::double precision, key / 34.656203751888171::double precision)
                * 0.99000000000000010::double precision
         end
$$;

-- One sketch, or a jsonb array of sketches (nulls skipped), merged into one canonical sketch.
-- Null for a null argument. Raises an error naming the sketch (its 1-based place in the array)
-- when one is not a sketch object of relative accuracy 0.01 with as many counts as keys.
create or replace function latency_sketch_merge(sketches jsonb)
returns jsonb
language plpgsql immutable parallel safe as $$
declare
  list jsonb := sketches;
  bad record;
  merged jsonb;
begin
  if list is null then
    return null;
  end if;
  if jsonb_typeof(list) = 'object' then
    list := jsonb_build_array(list);
  elsif jsonb_typeof(list) <> 'array' then
    raise exception 'latency_sketch_merge: expected a latency sketch or an array of them, got a jsonb %',
      jsonb_typeof(list) using errcode = '22023';
  end if;

  select s.place, s.sketch into bad
  from jsonb_array_elements(list) with ordinality as s(sketch, place)
  where jsonb_typeof(s.sketch) <> 'null'
    and (jsonb_typeof(s.sketch) <> 'object'
         or jsonb_typeof(s.sketch -> 'relative_accuracy') is distinct from 'number'
         or (s.sketch ->> 'relative_accuracy')::double precision <> 0.01
         or jsonb_typeof(s.sketch -> 'zero_count') is distinct from 'number'
         or jsonb_typeof(s.sketch -> 'keys') is distinct from 'array'
         or jsonb_typeof(s.sketch -> 'counts') is distinct from 'array'
         or jsonb_array_length(s.sketch -> 'keys') <> jsonb_array_length(s.sketch -> 'counts'))
  limit 1;
  if found then
    raise exception 'latency_sketch_merge: sketch % is not a latency sketch of relative accuracy 0.01 with as many counts as keys: %',
      bad.place, left(bad.sketch::text, 200) using errcode = '22023';
  end if;

  with sketch as (
    select s.sketch
    from jsonb_array_elements(list) as s(sketch)
    where jsonb_typeof(s.sketch) = 'object'
  ),
  bins as (
    select b.key::integer as key, sum(b.count::numeric) as count
    from sketch,
         rows from (jsonb_array_elements_text(sketch.sketch -> 'keys'),
                    jsonb_array_elements_text(sketch.sketch -> 'counts')) as b(key, count)
    group by b.key::integer
    having sum(b.count::numeric) > 0
  ),
  summary as (
    select coalesce(sum((sketch.sketch ->> 'zero_count')::numeric), 0) as zero_count,
           min((sketch.sketch ->> 'min_ms')::double precision) as min_ms,
           max((sketch.sketch ->> 'max_ms')::double precision) as max_ms
    from sketch
  )
  select jsonb_build_object(
           'relative_accuracy', 0.01,
           'zero_count', summary.zero_count,
           'keys', coalesce((select jsonb_agg(bins.key order by bins.key) from bins), '[]'::jsonb),
           'counts', coalesce((select jsonb_agg(bins.count order by bins.key) from bins), '[]'::jsonb),
           'min_ms', to_jsonb(summary.min_ms),
           'max_ms', to_jsonb(summary.max_ms))
  into merged
  from summary;
  return merged;
end
$$;

-- The values at quantiles `qs` (each in [0, 1]) of the merged sketches, in milliseconds, in the
-- order of `qs`; each null when the sketches hold no call, and null for a null argument.
create or replace function latency_quantiles(sketches jsonb, qs double precision[])
returns double precision[]
language plpgsql immutable parallel safe as $$
declare
  merged jsonb;
  zero double precision;
  total double precision;
  bad double precision;
  result double precision[];
begin
  if qs is null then
    return null;
  end if;
  select q into bad from unnest(qs) as u(q) where q is null or not (q >= 0 and q <= 1) limit 1;
  if found then
    raise exception 'latency_quantiles: quantile % is not in [0, 1]', coalesce(bad::text, 'null')
      using errcode = '22023';
  end if;
  merged := latency_sketch_merge(sketches);
  if merged is null then
    return null;
  end if;
  zero := (merged ->> 'zero_count')::double precision;
  select zero + coalesce(sum(c::numeric), 0)::double precision into total
  from jsonb_array_elements_text(merged -> 'counts') as c;
  if total = 0 then
    return array_fill(null::double precision, array[cardinality(qs)]);
  end if;

  with bins as materialized (
    select b.key::integer as key,
           (sum(b.count::numeric) over (order by b.key::integer))::double precision as running
    from rows from (jsonb_array_elements_text(merged -> 'keys'),
                    jsonb_array_elements_text(merged -> 'counts')) as b(key, count)
  ),
  ranks as (
    select u.place, u.q * (total - 1) as rank
    from unnest(qs) with ordinality as u(q, place)
  )
  select array_agg(
           case
             when ranks.rank < zero then 0::double precision
             else latency_sketch_value(coalesce(
               (select bins.key from bins where bins.running > ranks.rank - zero
                order by bins.key limit 1),
               (select max(bins.key) from bins)))
           end
           order by ranks.place)
  into result
  from ranks;
  return result;
end
$$;

-- The value at quantile q (in [0, 1]) of the merged sketches, in milliseconds; null when they hold
-- no call. E.g. latency_quantile(jsonb_agg(latency_sketch), 0.99) over any group of rollups.
create or replace function latency_quantile(sketches jsonb, q double precision)
returns double precision
language sql immutable parallel safe as $$
  select (latency_quantiles(sketches, array[q]))[1]
$$;

-- merge_latency(latency_sketch): an aggregate merging a group's sketches into one canonical
-- sketch (null for no rows), for latency_quantile(merge_latency(latency_sketch), 0.99). It gathers
-- the sketches and merges them once, as latency_quantile(jsonb_agg(latency_sketch), q) does.
create or replace function latency_sketch_merge_all(sketches jsonb[])
returns jsonb
language sql immutable parallel safe as $$
  select latency_sketch_merge(to_jsonb(sketches))
$$;

drop aggregate if exists merge_latency(jsonb);
create aggregate merge_latency(jsonb) (
  sfunc = array_append,
  stype = jsonb[],
  finalfunc = latency_sketch_merge_all,
  combinefunc = array_cat,
  parallel = safe
);

-- p50/p90/p95/p99 per service, scope and model, per bucket (date_bin from the epoch, as
-- merge_rollups buckets), over the rollups whose window starts in [from_time, to_time). Scopes as
-- in metric_rollups: 'service' (the service's total; model ''), 'model', 'other'.
create or replace function latency_percentiles(bucket interval, from_time timestamptz, to_time timestamptz)
returns table (
  service text, scope text, model text, window_start timestamptz, windows bigint, calls bigint,
  p50_ms double precision, p90_ms double precision, p95_ms double precision, p99_ms double precision
)
language sql stable parallel safe as $$
  select g.service, g.scope, g.model, g.window_start, g.windows, g.calls,
         g.qs[1], g.qs[2], g.qs[3], g.qs[4]
  from (
    select r.service, r.scope, r.model,
           date_bin(bucket, r.window_start, timestamptz 'epoch') as window_start,
           count(*) as windows, sum(r.calls)::bigint as calls,
           latency_quantiles(jsonb_agg(r.latency_sketch), array[0.5, 0.9, 0.95, 0.99]) as qs
    from metric_rollups r
    where r.window_start >= from_time and r.window_start < to_time
    group by r.service, r.scope, r.model, date_bin(bucket, r.window_start, timestamptz 'epoch')
  ) g
$$;

insert into schema_migrations (version, name) values (7, 'latency_percentiles') on conflict (version) do nothing;
