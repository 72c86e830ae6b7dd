# The two entry commands: `make run` and `make test`. Everything else wraps CMake.
BUILD      ?= build
ASAN_BUILD ?= build-asan
PORT       ?= 8080
BUSTED     := lua5.4 /usr/bin/busted

.PHONY: all setup build asan run test test-release test-asan bench clean fuzz fuzz-build fuzz-short

all: build

setup:
	@scripts/setup.sh

build:
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release >/dev/null
	@cmake --build $(BUILD) -j2

asan:
	@cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DMOONRING_SANITIZE=ON >/dev/null
	@cmake --build $(ASAN_BUILD) -j2

# Serve the default app on 127.0.0.1:$(PORT) in dev mode.
run: setup build
	$(BUILD)/moonring --dev --port $(PORT) handlers/

# Every spec against the optimised build, then against the sanitizer build.
test: setup
	@$(MAKE) --no-print-directory build asan
	@$(MAKE) --no-print-directory test-release test-asan fuzz-short

test-release:
	@echo "== specs: $(BUILD)/moonring"
	MOONRING_BIN=$(BUILD)/moonring $(BUSTED)

test-asan:
	@echo "== specs: $(ASAN_BUILD)/moonring (AddressSanitizer + UBSan)"
	MOONRING_BIN=$(ASAN_BUILD)/moonring MOONRING_SANITIZED=1 \
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	$(BUSTED)

bench: setup build
	@bench/run

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)

# ---- fuzzing (spec/fuzz/): libFuzzer + ASan + UBSan, clang ----------------
# `make fuzz SECONDS=n` fuzzes for n seconds; new inputs go to
# $(FUZZ_BUILD)/corpus (scratch), the committed seeds in spec/fuzz/corpus are
# only read. A crash lands in $(FUZZ_BUILD)/artifacts/. `make fuzz-short` (run
# by `make test`) replays spec/fuzz/crashes/ and fuzzes briefly from the seeds.
FUZZ_BUILD    ?= build-fuzz
SECONDS       ?= 60
SHORT_SECONDS ?= 30
FUZZ_FLAGS    ?=
FUZZ_BIN      := $(FUZZ_BUILD)/moonring-fuzz
FUZZ_OPTS     := -dict=spec/fuzz/http.dict -max_len=16384 -timeout=20 -close_fd_mask=3 \
                 -print_final_stats=1 -artifact_prefix=$(FUZZ_BUILD)/artifacts/
FUZZ_ENV      := ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
                 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

fuzz-build:
	@cmake -S . -B $(FUZZ_BUILD) -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug -DMOONRING_FUZZ=ON >/dev/null
	@cmake --build $(FUZZ_BUILD) --target moonring-fuzz -j2

fuzz: setup fuzz-build
	@mkdir -p $(FUZZ_BUILD)/corpus $(FUZZ_BUILD)/artifacts
	$(FUZZ_ENV) $(FUZZ_BIN) $(FUZZ_OPTS) -max_total_time=$(SECONDS) $(FUZZ_FLAGS) \
	  $(FUZZ_BUILD)/corpus spec/fuzz/corpus

fuzz-short: fuzz-build
	@echo "== fuzz: spec/fuzz/crashes replayed, then $(SHORT_SECONDS)s from spec/fuzz/corpus ($(FUZZ_BIN))"
	@rm -rf $(FUZZ_BUILD)/short-corpus && mkdir -p $(FUZZ_BUILD)/short-corpus $(FUZZ_BUILD)/artifacts
	@log=$(FUZZ_BUILD)/fuzz-short.log; \
	crashes=$$(find spec/fuzz/crashes -type f ! -name '*.md' | sort); \
	if [ -n "$$crashes" ] && ! $(FUZZ_ENV) $(FUZZ_BIN) -close_fd_mask=3 $$crashes >$$log 2>&1; then \
	  cat $$log; echo "fuzz: a spec/fuzz/crashes input fails again"; exit 1; fi; \
	if ! $(FUZZ_ENV) $(FUZZ_BIN) $(FUZZ_OPTS) -max_total_time=$(SHORT_SECONDS) $(FUZZ_FLAGS) \
	     $(FUZZ_BUILD)/short-corpus spec/fuzz/corpus >$$log 2>&1; then \
	  cat $$log; echo "fuzz: crash (input in $(FUZZ_BUILD)/artifacts/; log $$log)"; exit 1; fi; \
	grep -E '^(INFO: Seed|Done|stat::number_of_executed_units|stat::peak_rss)' $$log; \
	grep -E '^#[0-9]+' $$log | tail -n 1
