-- KEYS[4] = lock key. ARGV: owner, ttl_ms
local holder = redis.call('GET', KEYS[4])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[4], ARGV[1], 'PX', ARGV[2])
return 1
