"""The ``lfm`` Redis Function library (Lua), loaded with FUNCTION LOAD REPLACE when a PS starts.

Functions (rows use the layout of :mod:`ps_redis.codec`; every call touches one slot group):

- ``lfm_vec``      read-only: ``FCALL lfm_vec 1 <row key>`` prints a row as text (for people).
- ``lfm_movie`` / ``lfm_user``  read-only, standalone Redis: ``FCALL lfm_movie 0 <namespace> <raw id>``
  hashes the raw MovieLens id (bkdr2hash64 in exact double arithmetic) and prints that row.
- ``lfm_create``   set-if-absent of fresh rows; returns the stored values (the winner's on a race).
- ``lfm_push``     fenced assign / gradient update of one or more tables, atomic with its offsets.
- ``lfm_put``      absolute overwrite of whole rows (``load``).
- ``lfm_delete``   delete rows, keeping the row counter right.
- ``lfm_fence_max`` raise stored offsets to at least the given ones (cluster bookkeeping).
- ``lfm_activity`` one micro-batch of the activity log (see :mod:`ps_redis.activity`).
- ``lfm_covisit`` one window of the item channel (see :mod:`ps_redis.covisit`).
- ``lfm_write``   whole rows + sub-calls (activity log, row counters) + fence in one call: the
  learner's sync (see :mod:`ps_redis.fastpath`).

Stored values of the wrong length make a function fail before it writes anything, naming the key.
A fenced function gets a *fence block* (:meth:`ps_redis.types.Fence.block`): the offsets (and event seqs) it
raises, and lower bounds of what the writer knows is stored; a stored offset below its bound fails the call
with ``lfm: state lost: ...`` before anything is written (:class:`ps_redis.connection.PSStateLost`).
"""

from __future__ import annotations

LIBRARY_NAME = "lfm"

LIBRARY = r"""#!lua name=lfm

local function rowsize(dim) return 8 * dim + 32 end

local function check(key, v, dim)
  if v and #v ~= rowsize(dim) then
    return redis.error_reply('lfm: stored value of key ' .. key .. ' has ' .. #v ..
      ' bytes, expected ' .. rowsize(dim) .. ' for dim ' .. dim)
  end
  return nil
end

local CHUNK = 4000  -- stay below Lua's unpack() limit

-- MGET keys[first..last] in chunks; returns a 1-based table of values (false when absent)
local function mget(keys, first, last)
  local out, n = {}, 0
  for c = first, last, CHUNK do
    local vals = redis.call('MGET', unpack(keys, c, math.min(c + CHUNK - 1, last)))
    for j = 1, #vals do out[n + j] = vals[j] end
    n = n + #vals
  end
  return out
end

-- MSET of a flat {key, value, key, value, ...} table in chunks
local function mset(kv)
  for c = 1, #kv, CHUNK do
    redis.call('MSET', unpack(kv, c, math.min(c + CHUNK - 1, #kv)))
  end
end

local function fmt(x) return string.format('%.7g', x) end

local function show(key)
  local v = redis.call('GET', key)
  if not v then return redis.error_reply('lfm: no row at key ' .. key) end
  local dim = (#v - 32) / 8
  if dim < 1 or dim ~= math.floor(dim) then
    return redis.error_reply('lfm: value of key ' .. key .. ' has ' .. #v .. ' bytes, not a packed row')
  end
  local f = string.rep('f', dim)
  local vec = {struct.unpack('<' .. f, v)}
  local acc = {struct.unpack('<f' .. f, v, 4 * dim + 5)}
  local bias = struct.unpack('<f', v, 4 * dim + 1)
  local count, updated, raw = struct.unpack('<i8di8', v, 8 * dim + 9)
  local norm, sv, sa = 0, {}, {}
  for i = 1, dim do norm = norm + vec[i] * vec[i]; sv[i] = fmt(vec[i]) end
  for i = 1, dim + 1 do sa[i] = fmt(acc[i]) end
  return {'key=' .. key, 'raw=' .. string.format('%d', raw), 'dim=' .. dim,
          'count=' .. string.format('%d', count), 'updated=' .. string.format('%.3f', updated),
          'bias=' .. fmt(bias), 'norm=' .. fmt(math.sqrt(norm)),
          'vec=' .. table.concat(sv, ' '), 'accum=' .. table.concat(sa, ' ')}
end

local function lfm_vec(keys, args) return show(keys[1]) end

-- bkdr2hash64 (seed 131, low 60 bits) in exact double arithmetic: h = hi * 2^30 + lo
local TWO30 = 1073741824
local function bkdr60(text)
  local hi, lo = 0, 0
  for i = 1, #text do
    lo = lo * 131 + string.byte(text, i)
    local carry = math.floor(lo / TWO30)
    lo = lo - carry * TWO30
    hi = (hi * 131 + carry) % TWO30
  end
  return hi, lo
end

local function decimal(hi, lo)
  if hi == 0 and lo == 0 then return '0' end
  local digits = {}
  while hi > 0 or lo > 0 do
    local qh = math.floor(hi / 10)
    local rest = (hi - qh * 10) * TWO30 + lo
    local ql = math.floor(rest / 10)
    table.insert(digits, 1, string.format('%d', rest - ql * 10))
    hi, lo = qh, ql
  end
  return table.concat(digits)
end

-- standalone Redis only (the key is computed here, not declared): ARGV namespace, raw id
local function by_raw(table_name, prefix)
  return function(keys, args)
    local ns = args[1]
    local hi, lo = bkdr60(prefix .. args[2])
    local shards = tonumber(redis.call('HGET', ns .. ':@meta', 'shards') or '0')
    local id = decimal(hi, lo)
    if shards > 0 then
      return show('{' .. ns .. ':' .. table_name .. ':' .. (lo % shards) .. '}:' .. id)
    end
    return show(ns .. ':' .. table_name .. ':' .. id)
  end
end

-- KEYS: counter, row keys...; ARGV: dim, blob of packed rows (one per row key)
local function lfm_create(keys, args)
  local dim = tonumber(args[1])
  local size = rowsize(dim)
  local blob = args[2]
  local out, created = {}, 0
  for i = 2, #keys do
    local v = string.sub(blob, (i - 2) * size + 1, (i - 1) * size)
    if redis.call('SET', keys[i], v, 'NX') then
      created = created + 1
      out[i - 1] = v
    else
      out[i - 1] = redis.call('GET', keys[i])
    end
  end
  if created > 0 then redis.call('INCRBY', keys[1], created) end
  return out
end

-- KEYS: counter, row keys...; ARGV: dim, blob (absolute rows)
local function lfm_put(keys, args)
  local size = rowsize(tonumber(args[1]))
  local blob = args[2]
  local created = 0
  for i = 2, #keys do
    if not redis.call('SET', keys[i], string.sub(blob, (i - 2) * size + 1, (i - 1) * size), 'GET') then
      created = created + 1
    end
  end
  if created > 0 then redis.call('INCRBY', keys[1], created) end
  return created
end

-- KEYS: counter, row keys...
local function lfm_delete(keys, args)
  local n = 0
  for i = 2, #keys do n = n + redis.call('DEL', keys[i]) end
  if n > 0 then redis.call('DECRBY', keys[1], n) end
  return n
end

-- A fence block in ARGV from index `at`: np, (field, value) * np, ne, (partition, stored at least) * ne.
-- A field is a partition (value: its next offset) or 's' .. partition (the highest event seq applied there);
-- the bounds are what the writer knows the server stored (its own earlier writes, or what it resumed from).
local function fence_at(args, at)
  local np = tonumber(args[at] or '0')
  local e = at + 1 + 2 * np
  local ne = tonumber(args[e] or '0')
  return {first = at + 1, np = np, efirst = e + 1, ne = ne, after = e + 1 + 2 * ne}
end

-- true when every field of the block is stored with a value >= the block's (the write was applied)
local function covered(fkey, args, f)
  if f.np == 0 then return false end
  local fields = {}
  for j = 1, f.np do fields[j] = args[f.first + 2 * (j - 1)] end
  local stored = redis.call('HMGET', fkey, unpack(fields))
  for j = 1, f.np do
    if not stored[j] or tonumber(stored[j]) < tonumber(args[f.first + 2 * j - 1]) then return false end
  end
  return true
end

-- an error reply when a stored offset is below the writer's bound (the server lost writes), else nil
local function lost(fkey, args, f)
  if f.ne == 0 then return nil end
  local parts = {}
  for j = 1, f.ne do parts[j] = args[f.efirst + 2 * (j - 1)] end
  local stored = redis.call('HMGET', fkey, unpack(parts))
  local behind = {}
  for j = 1, f.ne do
    local bound = args[f.efirst + 2 * j - 1]
    if not stored[j] or tonumber(stored[j]) < tonumber(bound) then
      behind[#behind + 1] = 'partition ' .. parts[j] .. ' at ' .. (stored[j] or 'none') .. ' < ' .. bound
    end
  end
  if #behind == 0 then return nil end
  return redis.error_reply('lfm: state lost: offsets ' .. fkey .. ' behind what this writer stored: ' ..
                           table.concat(behind, ', '))
end

local function raise_fence(fkey, args, f)
  for j = 1, f.np do
    local field, v = args[f.first + 2 * (j - 1)], args[f.first + 2 * j - 1]
    local s = redis.call('HGET', fkey, field)
    if not s or tonumber(s) < tonumber(v) then redis.call('HSET', fkey, field, v) end
  end
end

-- checks a fenced write's bounds, then whether it is covered: an error reply, 0 (covered) or nil (go on)
local function enter(fkey, args, f)
  local err = lost(fkey, args, f)
  if err then return err end
  if covered(fkey, args, f) then return 0 end
  return nil
end

-- KEYS: fence key
-- ARGV: fence block
local function lfm_fence_max(keys, args)
  local f = fence_at(args, 1)
  local err = lost(keys[1], args, f)
  if err then return err end
  raise_fence(keys[1], args, f)
  return 1
end

-- KEYS: [fence key if np > 0], then per segment: counter key, row keys...
-- ARGV: mode ('assign'|'gradient'), now, dim, fence block,
--       nseg, then per segment: nkeys, mask (1 vec, 2 bias, 4 accum, 8 count), blob
-- blob holds, per row key, the masked fields in order vec f32[dim], bias f32, accum f32[dim+1], count i64.
local function lfm_push(keys, args)
  local mode, now, dim = args[1], tonumber(args[2]), tonumber(args[3])
  local f = fence_at(args, 4)
  local k = 1
  local fkey = nil
  if f.np > 0 then
    fkey = keys[1]; k = 2
    local stop = enter(fkey, args, f)
    if stop then return stop end
  end
  local a = f.after
  local nseg = tonumber(args[a]); a = a + 1
  local size = rowsize(dim)
  local vb, ab = 4 * dim, 4 * dim + 4
  local fv, fa = '<' .. string.rep('f', dim), '<' .. string.rep('f', dim + 1)
  local fall = '<' .. string.rep('f', 2 * dim + 2)
  local segs = {}
  -- pass 1: read and validate everything before writing anything
  for s = 1, nseg do
    local n, mask, blob = tonumber(args[a]), tonumber(args[a + 1]), args[a + 2]
    a = a + 3
    local seg = {counter = keys[k], n = n, mask = mask, blob = blob, first = k + 1, old = {}}
    seg.old = mget(keys, k + 1, k + n)
    for i = 1, n do
      local err = check(keys[k + i], seg.old[i], dim)
      if err then return err end
    end
    k = k + n + 1
    segs[s] = seg
  end
  local zero_head = string.rep('\0', 8 * dim + 8)
  for s = 1, nseg do
    local seg = segs[s]
    local mask, blob = seg.mask, seg.blob
    local hv, hb, ha, hc = mask % 2 == 1, math.floor(mask / 2) % 2 == 1,
                           math.floor(mask / 4) % 2 == 1, math.floor(mask / 8) % 2 == 1
    local stride = (hv and vb or 0) + (hb and 4 or 0) + (ha and ab or 0) + (hc and 8 or 0)
    local created = 0
    local kv = {}
    for i = 1, seg.n do
      local old = seg.old[i]
      if not old then
        old = zero_head .. struct.pack('<i8di8', 0, now, -1)
        created = created + 1
      end
      local p = (i - 1) * stride + 1
      local vec, bias, acc
      if mode == 'assign' then
        if hv then vec = string.sub(blob, p, p + vb - 1); p = p + vb else vec = string.sub(old, 1, vb) end
        if hb then bias = string.sub(blob, p, p + 3); p = p + 4 else bias = string.sub(old, vb + 1, vb + 4) end
        if ha then acc = string.sub(blob, p, p + ab - 1); p = p + ab else acc = string.sub(old, vb + 5, vb + 4 + ab) end
      elseif hv and hb and ha then  -- vec|bias|accum are adjacent: one unpack / pack of 2 dim + 2 floats
        local o = {struct.unpack(fall, old, 1)}
        local g = {struct.unpack(fall, blob, p)}
        for j = 1, dim + 1 do o[j] = o[j] - g[j] end
        for j = dim + 2, 2 * dim + 2 do o[j] = o[j] + g[j] end
        vec = struct.pack(fall, unpack(o, 1, 2 * dim + 2)); bias = ''; acc = ''; p = p + vb + 4 + ab
      elseif hv and hb then  -- vec and bias are adjacent: one unpack / pack of dim + 1 floats
        local o = {struct.unpack(fa, old, 1)}
        local g = {struct.unpack(fa, blob, p)}
        for j = 1, dim + 1 do o[j] = o[j] - g[j] end
        vec = struct.pack(fa, unpack(o, 1, dim + 1)); bias = ''; p = p + vb + 4
        if ha then
          local o2 = {struct.unpack(fa, old, vb + 5)}
          local g2 = {struct.unpack(fa, blob, p)}
          for j = 1, dim + 1 do o2[j] = o2[j] + g2[j] end
          acc = struct.pack(fa, unpack(o2, 1, dim + 1)); p = p + ab
        else acc = string.sub(old, vb + 5, vb + 4 + ab) end
      else
        if hv then
          local o = {struct.unpack(fv, old, 1)}
          local g = {struct.unpack(fv, blob, p)}
          for j = 1, dim do o[j] = o[j] - g[j] end
          vec = struct.pack(fv, unpack(o, 1, dim)); p = p + vb
        else vec = string.sub(old, 1, vb) end
        if hb then
          bias = struct.pack('<f', struct.unpack('<f', old, vb + 1) - struct.unpack('<f', blob, p)); p = p + 4
        else bias = string.sub(old, vb + 1, vb + 4) end
        if ha then
          local o = {struct.unpack(fa, old, vb + 5)}
          local g = {struct.unpack(fa, blob, p)}
          for j = 1, dim + 1 do o[j] = o[j] + g[j] end
          acc = struct.pack(fa, unpack(o, 1, dim + 1)); p = p + ab
        else acc = string.sub(old, vb + 5, vb + 4 + ab) end
      end
      local count = struct.unpack('<i8', old, 8 * dim + 9)
      if hc then count = count + struct.unpack('<i8', blob, p) end
      kv[2 * i - 1] = keys[seg.first + i - 1]
      kv[2 * i] = vec .. bias .. acc .. struct.pack('<i8d', count, now) .. string.sub(old, 8 * dim + 25, size)
    end
    mset(kv)
    if created > 0 then redis.call('INCRBY', seg.counter, created) end
  end
  if fkey then raise_fence(fkey, args, f) end
  return 1
end

-- little-endian signed ints of `width` bytes (4 or 8) packed in `blob`, as a Lua table
local function ints(blob, width)
  local out, n = {}, #blob / width
  local f = width == 4 and 'i4' or 'i8'
  for c = 0, n - 1, CHUNK do
    local m = math.min(CHUNK, n - c)
    local vals = {struct.unpack('<' .. string.rep(f, m), blob, c * width + 1)}
    for j = 1, m do out[c + j] = vals[j] end
  end
  return out
end

local function int(x) return string.format('%d', x) end

-- KEYS: popular zset, changes stream, clock, epoch [, fence key]
-- ARGV: seen prefix, int width (4|8), users (packed ints: raw user, n, movie 1 .. movie n, ...),
--       positives (packed ints: movie, count, ...), changed item ids (packed int64), max event ts,
--       stream maxlen, epoch token (set if none yet) [, fence block]
-- With a fence: returns 0 without writing when its offsets are covered, else raises them with the record.
local function lfm_activity(keys, args)
  local f = fence_at(args, 9)
  local fkey = f.np > 0 and keys[5] or nil
  if fkey then
    local stop = enter(fkey, args, f)
    if stop then return stop end
  end
  local prefix, width = args[1], tonumber(args[2])
  local u = ints(args[3], width)
  local i = 1
  while i <= #u do
    local n = u[i + 1]
    local members = {}
    for j = 1, n do members[j] = int(u[i + 1 + j]) end
    redis.call('SADD', prefix .. int(u[i]), unpack(members))
    i = i + 2 + n
  end
  local p = ints(args[4], width)
  for j = 1, #p, 2 do redis.call('ZINCRBY', keys[1], p[j + 1], int(p[j])) end
  local id = false
  if #args[5] > 0 then
    id = redis.call('XADD', keys[2], 'MAXLEN', '~', args[7], '*', 'ids', args[5], 'ts', args[6])
  end
  redis.call('SET', keys[4], args[8], 'NX')
  local clock = redis.call('GET', keys[3])
  if not clock or tonumber(clock) < tonumber(args[6]) then redis.call('SET', keys[3], args[6]) end
  if fkey then raise_fence(fkey, args, f) end
  return id
end

-- The item channel's additions of one window (see ps_redis.covisit), checked whole before anything is written.
-- KEYS: meta hash, degree hash, all-time popularity hash, B bucket popularity hashes, S strings to set
--       (neighbour lists and users' recent movies)
-- ARGV: events, bucket, B, S, then the degree hash, the all-time hash and each bucket hash: n, (field, increment)
--       * n, then one value per string.
local function lfm_covisit(keys, args)
  local nb, ns = tonumber(args[3]), tonumber(args[4])
  if not (nb and ns) or #keys ~= 3 + nb + ns then
    return redis.error_reply('lfm: lfm_covisit: ' .. #keys .. ' keys do not match the counts in its arguments')
  end
  local a = 5
  for _ = 1, 2 + nb do  -- check the layout before writing
    local n = tonumber(args[a])
    if not n then return redis.error_reply('lfm: lfm_covisit: bad count at argument ' .. a) end
    a = a + 1 + 2 * n
  end
  if a + ns ~= #args + 1 then
    return redis.error_reply('lfm: lfm_covisit: ' .. #args .. ' arguments do not match their counts')
  end
  a = 5
  local function hincr(key)
    local n = tonumber(args[a])
    a = a + 1
    for _ = 1, n do
      redis.call('HINCRBY', key, args[a], args[a + 1])
      a = a + 2
    end
  end
  hincr(keys[2])
  hincr(keys[3])
  for k = 1, nb do hincr(keys[3 + k]) end
  for k = 1, ns do
    redis.call('SET', keys[3 + nb + k], args[a])
    a = a + 1
  end
  redis.call('HSET', keys[1], 'events', args[1], 'bucket', args[2])
  return ns
end

-- the library's functions lfm_write runs as sub-calls (a Function cannot FCALL another)
local SUBCALLS = {lfm_activity = lfm_activity, lfm_covisit = lfm_covisit}

-- One write, all or nothing as far as this library goes: rows, sub-calls and the fence in one Function call, so
-- a server without the library (restarted without persistence, FUNCTION FLUSH) runs none of it.  In a MULTI/EXEC
-- a failing command does not stop the others: rows and offsets would commit without the side writes.
-- KEYS: [fence key if np > 0], row keys..., then the keys of each sub-call in order
-- ARGV: fence block, nrows, a packed row per row key, ncalls, then per sub-call: name, nkeys, nargs, args * nargs
-- A sub-call named like a function above runs it; any other name is a Redis command (its keys, then its args).
-- Order: bounds and coverage, the arguments' layout, sub-calls, rows (MSET), then the offsets (raised only when
-- everything before succeeded).  Returns 0 when the fence is covered (nothing written), else 1.
-- Cost on the server: ~1 us per row more than a native MSET (Lua strings for keys and values), 8,000 rows ~10 ms.
local function lfm_write(keys, args)
  local f = fence_at(args, 1)
  local k = 1
  local fkey = nil
  if f.np > 0 then
    fkey = keys[1]; k = 2
    local stop = enter(fkey, args, f)
    if stop then return stop end
  end
  local a = f.after
  local nrows = tonumber(args[a])
  local v = a + 1  -- the first row value
  a = a + 1 + nrows
  local ncalls = tonumber(args[a])
  a = a + 1
  local calls, kc = {}, k + nrows
  for c = 1, ncalls do
    local name, nk, na = args[a], tonumber(args[a + 1]), tonumber(args[a + 2])
    local ck, ca = {}, {}
    for j = 1, nk do ck[j] = keys[kc + j - 1] end
    for j = 1, na do ca[j] = args[a + 2 + j] end
    calls[c] = {name = name, keys = ck, args = ca}
    kc = kc + nk
    a = a + 3 + na
  end
  if kc ~= #keys + 1 or a ~= #args + 1 then
    return redis.error_reply('lfm: lfm_write: ' .. #keys .. ' keys and ' .. #args ..
                             ' arguments do not match ' .. nrows .. ' rows and ' .. ncalls .. ' sub-calls')
  end
  for c = 1, ncalls do
    local call = calls[c]
    local fn = SUBCALLS[call.name]
    local res
    if fn then
      res = fn(call.keys, call.args)
    else
      local cmd = {call.name}
      for _, x in ipairs(call.keys) do cmd[#cmd + 1] = x end
      for _, x in ipairs(call.args) do cmd[#cmd + 1] = x end
      res = redis.call(unpack(cmd))
    end
    if type(res) == 'table' and res.err then return res end
  end
  local kv = {}
  for i = 1, nrows do
    kv[2 * i - 1] = keys[k + i - 1]
    kv[2 * i] = args[v + i - 1]
  end
  mset(kv)
  if fkey then raise_fence(fkey, args, f) end
  return 1
end

redis.register_function{function_name='lfm_vec', callback=lfm_vec, flags={'no-writes'}}
redis.register_function{function_name='lfm_movie', callback=by_raw('item', 'MovieID='), flags={'no-writes'}}
redis.register_function{function_name='lfm_user', callback=by_raw('user', 'UserID='), flags={'no-writes'}}
redis.register_function('lfm_create', lfm_create)
redis.register_function('lfm_put', lfm_put)
redis.register_function('lfm_delete', lfm_delete)
redis.register_function('lfm_fence_max', lfm_fence_max)
redis.register_function('lfm_push', lfm_push)
redis.register_function('lfm_activity', lfm_activity)
redis.register_function('lfm_covisit', lfm_covisit)
redis.register_function('lfm_write', lfm_write)
"""


def load_library(client) -> None:
    """FUNCTION LOAD REPLACE the library on ``client`` (a node client; on a cluster call it per master)."""
    client.execute_command("FUNCTION", "LOAD", "REPLACE", LIBRARY)
