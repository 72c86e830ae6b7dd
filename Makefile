# The two entry commands: `make run` and `make test`. Everything else wraps CMake.
BUILD      ?= build
ASAN_BUILD ?= build-asan
PORT       ?= 8080
BUSTED     := lua5.4 /usr/bin/busted

.PHONY: all setup build asan run test test-release test-asan bench clean

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
	@$(MAKE) --no-print-directory test-release test-asan

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
	rm -rf $(BUILD) $(ASAN_BUILD)
