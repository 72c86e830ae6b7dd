-- GET /static/NAME for `make bench` (static-4k, static-1m): the files of
-- BENCH_STATIC_DIR (written by bench/run) through moonring.static. Without
-- it (bench/callgrind, a plain run of bench/app) /static/ has no files.
local dir = os.getenv("BENCH_STATIC_DIR")
if not dir then return function(handler) return handler end end
return require("moonring").static{ root = dir, prefix = "/static/" }
