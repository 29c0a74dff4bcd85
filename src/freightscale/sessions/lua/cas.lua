-- Compare-and-set of one session record.
-- KEYS[1]: the session key
-- ARGV[1]: expected version (0: the key must be absent)
-- ARGV[2]: the new record (JSON starting with {"v":<version>,)
-- ARGV[3]: time to live in milliseconds
-- Returns 1 when written; otherwise the current value (nil when absent).
local current = redis.call('GET', KEYS[1])
local version = 0
if current then
  version = tonumber(string.match(current, '^{"v":(%d+),')) or -1
end
if version ~= tonumber(ARGV[1]) then
  return current
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
