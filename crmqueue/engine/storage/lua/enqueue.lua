-- ARGV: count, skip_existing ('1': a job whose id is stored already is left as it is and
-- this one dropped), now (the producer's clock, as the SQLite store's created_at and every
-- run_at given), then per job id, name, tenant, priority, max_attempts, message, run_at
-- ('' = now). Each redis.call costs the server about as much again as its command: a
-- single enqueue makes four (INCRBY, HSET, ZADD, LLEN), and an LPUSH when the wake list
-- is short. (The message stays in the hash: in a key of its own it would leave the hash a
-- compact listpack, but the extra SET cost more than the listpack saved, measured.)
local now = tonumber(ARGV[3])
local n = tonumber(ARGV[1])
local skip_existing = ARGV[2] == '1'
local added = 0
-- Daily quotas (crmqueue.engine.quotas), passed only when one applies: after the jobs a
-- count, then per quota tenant, counter key suffix, limit and expiry (Unix seconds). All
-- are checked before anything is stored; over a limit the reply is {tenant, used, asked}.
local qb = 4 + n * 7
if ARGV[qb] then
  local want = {}
  for i = 0, n - 1 do
    local b = 4 + i * 7
    if not (skip_existing and redis.call('EXISTS', job_key(ARGV[b])) == 1) then
      want[ARGV[b + 2]] = (want[ARGV[b + 2]] or 0) + 1
    end
  end
  local nq = tonumber(ARGV[qb])
  for q = 0, nq - 1 do
    local b = qb + 1 + q * 4
    local asked = want[ARGV[b]] or 0
    local used = tonumber(redis.call('GET', queue_key(ARGV[b + 1])) or '0')
    if asked > 0 and used + asked > tonumber(ARGV[b + 2]) then return {ARGV[b], used, asked} end
  end
  for q = 0, nq - 1 do
    local b = qb + 1 + q * 4
    local asked = want[ARGV[b]] or 0
    if asked > 0 then
      redis.call('INCRBY', queue_key(ARGV[b + 1]), asked)
      redis.call('EXPIREAT', queue_key(ARGV[b + 1]), ARGV[b + 3])
    end
  end
end
-- One sequence step and one ZADD for the whole batch (in order), not one per job.
local seq = redis.call('INCRBY', queue_key('seq'), n) - n
local waiting = {}
for i = 0, n - 1 do
  local b = 4 + i * 7
  local id, priority, run_at = ARGV[b], tonumber(ARGV[b + 3]), ARGV[b + 6]
  local jk = job_key(id)
  if not (skip_existing and redis.call('EXISTS', jk) == 1) then
    local state = 'waiting'
    if run_at ~= '' and tonumber(run_at) > now then state = 'scheduled' end
    -- progress, attempts, stalls and errors start absent: readers take them as 0 and [].
    redis.call('HSET', jk, 'id', id, 'queue', KEYS[3], 'name', ARGV[b + 1],
      'tenant', ARGV[b + 2], 'state', state, 'priority', priority,
      'max_attempts', ARGV[b + 4], 'message', ARGV[b + 5], 'created_at', ARGV[3])
    if state == 'scheduled' then
      redis.call('HSET', jk, 'run_at', run_at)
      redis.call('ZADD', queue_key('scheduled'), tonumber(run_at), id)
    else
      waiting[#waiting + 1] = waiting_score(priority, seq + i + 1)
      waiting[#waiting + 1] = id
    end
    added = added + 1
    if EVENTS_MAXLEN > 0 then emit('enqueued', id, state, ARGV[b + 1], ARGV[b + 2]) end
  end
end
-- (In steps of 500 jobs: Lua's unpack has a limit, and a quota enqueue is one call.)
for s = 1, #waiting, 1000 do
  redis.call('ZADD', queue_key('waiting'), unpack(waiting, s, math.min(s + 999, #waiting)))
end
-- Scheduled jobs wake a consumer too: it learns the new due time instead of sleeping on.
-- The wake list is kept at most 64 long. A consumer blocked on it takes a push at once,
-- so a long list means nobody was waiting: a push onto it is left out.
if added > 0 and redis.call('LLEN', queue_key('wake')) < 64 then
  redis.call('LPUSH', queue_key('wake'), '1')
end
return added
