# msgspool: the two commands a fresh machine needs are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: run test test-e2e test-in-process test-postgresql lint dovecot browser bench abuse abuse-disk chaos nodes clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,fast]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/msgspool serve $(ARGS)

# The whole suite on SQLite (the PostgreSQL store's own tests and the contract suite on both
# stores included), then the in-process integration tests again on PostgreSQL: every part of the
# spooler on either store (issue 11). Without a PostgreSQL server the second run skips; in CI
# (CI=true) it fails instead. The tests mostly wait on sockets and child processes, not on the
# CPU, so two jobs run side by side, each on loopback ports of its own: the daemon end-to-end
# tests (tests/e2e, one at a time: they time respawns and wakeups), and the rest on TEST_WORKERS
# pytest-xdist workers (each with its share of the job's ports, tests/support/sink.free_port) —
# the in-process tests on SQLite, then tests/integration again on PostgreSQL. PYTEST_ARGS (flags,
# not paths) goes to every run; TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 3
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist worksteal)
test: $(STAMP)
	$(MAKE) -j2 --output-sync=target test-e2e test-in-process

test-e2e: $(STAMP)
	MSGSPOOL_TEST_PORTS=10000-15999 $(BIN)/python -m pytest -q tests/e2e $(PYTEST_ARGS)

test-in-process: $(STAMP)
	MSGSPOOL_TEST_PORTS=16000-32767 $(BIN)/python -m pytest -q $(XDIST) --ignore=tests/e2e $(PYTEST_ARGS)
	$(MAKE) test-postgresql

test-postgresql: $(STAMP)
	MSGSPOOL_TEST_STORE=postgresql MSGSPOOL_TEST_PORTS=16000-32767 $(BIN)/python -m pytest -q $(XDIST) tests/integration $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

# Debian's Dovecot, the real peer of the LMTP transport and the POP3/IMAP fetch tests (issue 12):
# installed only, never started as a service (tests/support/dovecot.py runs its own, per test).
DOVECOT_PACKAGES = dovecot-core dovecot-lmtpd dovecot-pop3d dovecot-imapd
dovecot:
	@if [ -x /usr/sbin/dovecot ] && [ -x /usr/lib/dovecot/lmtp ] && [ -x /usr/lib/dovecot/pop3 ] \
	    && [ -x /usr/lib/dovecot/imap ]; then exit 0; fi; \
	apt-get install -y -q $(DOVECOT_PACKAGES) >/dev/null 2>&1 \
	    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $(DOVECOT_PACKAGES) >/dev/null; }

# Debian's Chromium, the browser of the dashboard's end-to-end tests (tests/support/browser.py drives
# it with Playwright for Python, from the dev extras; `playwright install` is never run).
browser:
	@if [ -x /usr/bin/chromium ]; then exit 0; fi; \
	apt-get install -y -q chromium >/dev/null 2>&1 \
	    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null; }

# Issue 5's table (bench/, which runs ../shared/bench/relay_bench.py for the ratio rows; Postfix is
# installed on first use). Postfix is stopped afterwards, since its benchmark listener takes port
# 2525, msgspool's default. BENCH_ARGS: --quick, --only ROW, --no-postfix, --json FILE (python -m bench -h).
bench: $(STAMP)
	MSGSPOOL_CMD=$(abspath $(BIN))/msgspool $(BIN)/python -m bench $(BENCH_ARGS); \
	status=$$?; postfix stop >/dev/null 2>&1; exit $$status

# The SMTP listener under abuse (bench/abuse.py): open DATA phases, an idle-connection flood, a
# legitimate session meanwhile, slow-loris DATA, 10,000 fuzzed sessions. ABUSE_ARGS: --quick, --tls, --json FILE.
abuse: $(STAMP)
	MSGSPOOL_CMD=$(abspath $(BIN))/msgspool $(BIN)/python -m bench.abuse $(ABUSE_ARGS)

# A full disk under SMTP load (bench/diskfull.py, needs root for its tmpfs): replies seen, acknowledged,
# lost and stuck (both must be 0). DISK_ARGS: --quick, --size 64m, --rate N, --json FILE.
abuse-disk: $(STAMP)
	MSGSPOOL_CMD=$(abspath $(BIN))/msgspool $(BIN)/python -m bench.diskfull $(DISK_ARGS)

# Chaos under load (bench/chaos.py): 50 kill -9 of the whole daemon, then 20 of its delivery process,
# while SMTP clients submit; prints acknowledged, lost, duplicated, in flight, respawn, intake latency.
chaos: $(STAMP)
	MSGSPOOL_CMD=$(abspath $(BIN))/msgspool $(BIN)/python -m bench.chaos $(CHAOS_ARGS)

# Several nodes on one PostgreSQL spool (bench/nodes.py): exactly once while healthy, then kill -9
# of one node under load. NODES_ARGS: --quick, --nodes N, --lease-time S, --json FILE.
nodes: $(STAMP)
	MSGSPOOL_CMD=$(abspath $(BIN))/msgspool $(BIN)/python -m bench.nodes $(NODES_ARGS)

clean:
	rm -rf $(VENV) msgspool-data
