#!/usr/bin/env python3
"""carespool benchmark: throughput and drop->done latency of the real daemon.

Usage: bench/bench.py path/to/carespool [--files 10000] [--rate 1000] [--seconds 10]

Phase 1 drops N single-event files rsync-style (dot-temp name in the inbox, then rename) into a running
daemon as fast as it can and reports files/s from the first drop to the last file in done/.
Phase 2 drops files at a steady rate and reports p50/p99/max latency from each file's rename into the
inbox to its rename into done/, observed with inotify (IN_MOVED_TO on done/appointments/<day>/).
Phase 3 renames a generated 50 MB Zoom NDJSON export into inbox/zoom/ and reports rows/s until it is in
done/ and the daemon's peak resident memory (VmHWM).
Phase 4 generates a 1,000,000-row intake CSV (30% repeated MRNs), times `sqlite3 .import` of it into one
raw table and carespool's full intake of it, and prints both rows/s, their ratio and the peak RSS, then
the data model's floor (the same rows loaded set-based into carespool's schema by the sqlite3 shell, with
carespool's 32 MiB page cache) and
the leanest schema's floor (the same into the fewest tables and indexes the prescribed model allows).
Phase 5 posts unique webhooks with wrk: durable 202s/s on a disk spool, on tmpfs, and on disk with
processing held off (the write path alone), and GET /health's rate.
Phase 7 ("keys") generates realistic intake files with bench/intake_data.py (seeded; accented names,
quoted reasons, 30% repeated patients, columns in an order of their own) whose MRNs and visit numbers are
scrambled, as real feeds send them, or ascending: carespool's rows/s and peak RSS on each, and a plain
Python loader (bench/python_loader.py: stdlib csv + sqlite3 into the same normalised tables) as the peer
on the scrambled one, and SQLite's floor for each file (phase 4's set-based load into the same schema, with
carespool's 32 MiB page cache): what key order costs SQLite itself. --long adds a 10,000,000-row scrambled
file.
Phase 8 ("gzip") drops one 1,000,000-row realistic intake file (scrambled keys) plain and as .csv.gz into
fresh daemons: rows/s of each, their ratio (target at least 0.8) and each one's peak RSS.
Phase 9 ("postgres", bench/postgres.py) starts a PostgreSQL server of its own: files/s with one host and
with two hosts against one database, and the 1,000,000-row realistic intake (ascending and scrambled keys)
into PostgreSQL against `psql \\copy` of the same file into one unindexed table, with the peak RSS.
Phase 6 drops each adversarial shape of bench/shapes.py (8 MB) and the plain file of its kind into a fresh
daemon: MB/s to its verdict, the ratio to the plain file's, and the peak RSS. docs/PERFORMANCE.md has the
details.
"""
import argparse, ctypes, ctypes.util, datetime, glob, json, os, shutil, signal, sqlite3, struct, subprocess, sys, tempfile, threading, time

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
IN_MOVED_TO = 0x80


def event(n, tag):
    return ('{"event_type":"appointment.scheduled","appointment_id":"%s-%d","patient_id":"P%d",'
            '"timestamp":"2025-01-10T12:30:00Z","notes":"bench"}\n' % (tag, n, n)).encode()


class DoneWatcher(threading.Thread):
    """Records the arrival time of every name moved into `folder`."""

    def __init__(self, folder):
        super().__init__(daemon=True)
        self.fd = libc.inotify_init()
        if libc.inotify_add_watch(self.fd, folder.encode(), IN_MOVED_TO) < 0:
            raise OSError(ctypes.get_errno(), "inotify_add_watch " + folder)
        self.arrivals = {}
        self.lock = threading.Lock()

    def run(self):
        while True:
            data = os.read(self.fd, 1 << 20)
            now = time.monotonic()
            offset = 0
            with self.lock:
                while offset < len(data):
                    wd, mask, cookie, length = struct.unpack_from("iIII", data, offset)
                    name = data[offset + 16: offset + 16 + length].rstrip(b"\0").decode()
                    offset += 16 + length
                    original = name.split("--", 1)[1] if "--" in name else name
                    self.arrivals[original] = now

    def count(self, prefix):
        with self.lock:
            return sum(1 for k in self.arrivals if k.startswith(prefix))


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100.0 * (len(values) - 1))))]


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wrk(url, seconds, script=None):
    """Runs wrk (2 threads, 64 connections) and returns (2xx answers/s, p50 ms, p99 ms, non-2xx count).
    wrk's own Requests/sec counts every answer; only the 2xx ones are durable 202s."""
    command = ["wrk", "-t2", "-c64", "-d%ds" % seconds, "--latency"]
    if script:
        command += ["-s", script]
    out = subprocess.run(command + [url], check=True, capture_output=True, text=True).stdout

    def ms(label):
        for line in out.splitlines():
            parts = line.split()
            if parts and parts[0] == label:
                value = parts[1]
                if value.endswith("us"):
                    return float(value[:-2]) / 1000
                if value.endswith("ms"):
                    return float(value[:-2])
                if value.endswith("s"):
                    return float(value[:-1]) * 1000
        return float("nan")

    errors = sum(int(l.split()[-1]) for l in out.splitlines() if l.strip().startswith("Non-2xx"))
    total_line = next(l for l in out.splitlines() if " requests in " in l)
    total = int(total_line.split()[0])
    elapsed = total_line.split(" requests in ")[1].split(",")[0]
    elapsed_s = float(elapsed[:-2]) / 1000 if elapsed.endswith("ms") else float(elapsed[:-1])
    return (total - errors) / elapsed_s, ms("50%"), ms("99%"), errors


def group_commits(port):
    """The HTTP endpoint's group commits so far, from its metrics: (groups, mean requests a group, mean
    ms of the data sync, the renames, the folder fsyncs)."""
    text = subprocess.run(["curl", "-s", "http://127.0.0.1:%d/metrics" % port], capture_output=True, text=True).stdout
    values = {}
    for line in text.splitlines():
        if line.startswith(("carespool_http_sync_seconds_sum", "carespool_http_sync_seconds_count",
                            "carespool_http_synced_requests_total")):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    groups = values.get('carespool_http_sync_seconds_count{phase="data"}', 0)
    if not groups:
        return (0, 0, 0, 0, 0)
    ms = lambda phase: values.get('carespool_http_sync_seconds_sum{phase="%s"}' % phase, 0) / groups * 1000
    return (groups, values.get("carespool_http_synced_requests_total", 0) / groups, ms("data"), ms("rename"),
            ms("directories"))


def schema_of(daemon_db):
    """The tables and indexes of a database carespool made, as SQL."""
    return subprocess.run(["sqlite3", daemon_db,
                           "SELECT sql || ';' FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%'"],
                          check=True, capture_output=True, text=True).stdout


def data_model_floor(schema, raw_db, floor_db):
    """Seconds the sqlite3 shell takes to load the raw table's rows into a fresh copy of carespool's own
    schema (patients, persons, visits, every index and deferred foreign key) with three set-based
    INSERT ... SELECT in one transaction: SQLite's own work for this data model, without parsing,
    validation, person history or dedupe classification - a ceiling for any writer of this schema."""
    file_id = "00000000-0000-7000-8000-000000000000"
    setup = ("PRAGMA journal_mode = WAL;\n" + schema +
             "INSERT INTO files (id, kind, original_name, sha256, size, received_at, finished_at, outcome, report) "
             "VALUES ('%s', 'intake', 'floor.csv', printf('%%064d', 0), 0, '', '', 'accepted', '{}');\n" % file_id)
    subprocess.run(["sqlite3", floor_db], input=setup, check=True, capture_output=True, text=True)
    return timed_load(raw_db, floor_db, "file_id", "'%s'" % file_id)


# The leanest schema that still holds the model #4 prescribes - patients (mrn unique), persons (one per
# patient), visits (visit_account_number unique, linked to and looked up by patient) - with the file that
# wrote each row as a bare integer: no per-file index, no foreign key to the ledger, no history table.
LEANEST_SCHEMA = """PRAGMA journal_mode = WAL;
CREATE TABLE patients (id INTEGER PRIMARY KEY, mrn TEXT NOT NULL UNIQUE, file_ref INTEGER NOT NULL) STRICT;
CREATE TABLE persons (patient_id INTEGER PRIMARY KEY REFERENCES patients (id), first_name TEXT NOT NULL,
  last_name TEXT NOT NULL, birth_date TEXT NOT NULL, file_ref INTEGER NOT NULL) STRICT;
CREATE TABLE visits (id INTEGER PRIMARY KEY, visit_account_number TEXT NOT NULL UNIQUE,
  patient_id INTEGER NOT NULL REFERENCES patients (id), visit_date TEXT NOT NULL, reason TEXT,
  file_ref INTEGER NOT NULL, record INTEGER NOT NULL) STRICT;
CREATE INDEX visits_by_patient ON visits (patient_id);
"""


def leanest_floor(raw_db, floor_db):
    """Seconds the sqlite3 shell takes to load the raw table's rows set-based into LEANEST_SCHEMA: what
    SQLite alone needs for the prescribed model however far its schema is trimmed."""
    subprocess.run(["sqlite3", floor_db], input=LEANEST_SCHEMA, check=True, capture_output=True, text=True)
    return timed_load(raw_db, floor_db, "file_ref", "1")


def timed_load(raw_db, floor_db, file_column, file_value):
    """Three set-based INSERT ... SELECT from the raw table in one transaction; checks the counts loaded."""
    load = """PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL; PRAGMA cache_size = -32768;
ATTACH '%(raw)s' AS r;
BEGIN;
INSERT INTO patients (mrn, %(col)s) SELECT mrn, %(val)s FROM r.raw WHERE true ON CONFLICT DO NOTHING;
INSERT INTO persons (patient_id, first_name, last_name, birth_date, %(col)s)
  SELECT p.id, first_name, last_name, birth_date, %(val)s FROM r.raw JOIN patients p USING (mrn) WHERE true ON CONFLICT DO NOTHING;
INSERT INTO visits (visit_account_number, patient_id, visit_date, reason, %(col)s, record)
  SELECT visit_account_number, p.id, visit_date, reason, %(val)s, r.raw.rowid FROM r.raw JOIN patients p USING (mrn);
COMMIT;
""" % {"raw": raw_db, "col": file_column, "val": file_value}
    begin = time.monotonic()
    subprocess.run(["sqlite3", floor_db], input=load, check=True, capture_output=True, text=True)
    seconds = time.monotonic() - begin
    counts = subprocess.run(["sqlite3", floor_db, "SELECT (SELECT count(*) FROM visits) || ' ' || (SELECT count(*) FROM persons)"],
                            check=True, capture_output=True, text=True).stdout.split()
    raw = subprocess.run(["sqlite3", raw_db, "SELECT count(*) || ' ' || count(DISTINCT mrn) FROM raw"],
                         check=True, capture_output=True, text=True).stdout.split()
    if counts != raw:
        sys.exit("data model floor: loaded %s visits/persons, expected %s into %s" % (counts, raw, floor_db))
    return seconds


def http_phase(binary, schema, seconds):
    """Durable 202s/s on a disk spool and on a tmpfs spool (/dev/shm), and GET /health's rate; then the
    write path alone on disk: the same load with the pipeline held off by an exclusive lock on the
    database (its first batch waits on the lock; nothing else is processed), so the requests' own cost
    shows without the processing that shares the two cores."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "unique-post.lua")
    results = {}
    roots = []
    for label, base in (("disk", None), ("tmpfs", "/dev/shm"), ("held", None)):
        root = tempfile.mkdtemp(prefix="carespool-bench-http-", dir=base)
        roots.append(root)
        spool = os.path.join(root, "spool")
        port = free_port()
        log = open(os.path.join(root, "daemon.log"), "w")
        daemon = subprocess.Popen([binary, "serve", "--spool", spool, "--schema", schema, "--log-level", "warning",
                                   "--http", "127.0.0.1:%d" % port, "--http-open", "*",
                                   # The write path's rate, not the backpressure's: over 20 s the inbox
                                   # outgrows the default high-water mark (20,000) on tmpfs.
                                   "--inbox-high-water", "1000000"], stderr=log)
        try:
            deadline = time.monotonic() + 30
            while subprocess.run(["curl", "-s", "-o", "/dev/null", "http://127.0.0.1:%d/health" % port]).returncode:
                if time.monotonic() > deadline:
                    sys.exit("http phase: daemon did not listen")
                time.sleep(0.1)
            lock = None
            if label == "held":
                lock = sqlite3.connect(os.path.join(spool, "carespool.sqlite3"), isolation_level=None, timeout=30)
                lock.execute("BEGIN EXCLUSIVE")
            results[label] = wrk("http://127.0.0.1:%d" % port, seconds, script)
            results[label + " groups"] = group_commits(port)
            if lock is not None:
                lock.execute("ROLLBACK")
                lock.close()
            if label == "disk":
                results["health"] = wrk("http://127.0.0.1:%d/health" % port, 5)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=60)
    # Removed only now: on this VM's ext4 (no journal) a file created within a minute of a mass deletion
    # costs far more (the inode allocator skips recently deleted inodes), which would skew the next run.
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)
    disk, tmpfs, health, held = results["disk"], results["tmpfs"], results["health"], results["held"]
    print("| HTTP POST /webhook/appointments, disk spool (wrk -t2 -c64 -d%ds, unique bodies) | %.0f durable 202/s, p50 %.2f ms, p99 %.2f ms, non-2xx %d |" % ((seconds,) + disk))
    print("| same, spool on tmpfs (/dev/shm) | %.0f 202/s, p50 %.2f ms, p99 %.2f ms, non-2xx %d |" % tmpfs)
    print("| the write path alone: disk spool, processing held off by a database lock | %.0f durable 202/s, p50 %.2f ms, p99 %.2f ms, non-2xx %d |" % held)
    for label, name in (("disk", "disk spool"), ("tmpfs", "tmpfs spool"), ("held", "the write path alone")):
        print("| group commits, %s | %.0f groups, %.1f requests a group; data sync %.2f ms, renames %.2f ms, directory fsyncs %.2f ms a group |"
              % ((name,) + results[label + " groups"]))
    print("| ratio disk / tmpfs | %.2f |" % (disk[0] / tmpfs[0]))
    print("| GET /health (the server's ceiling) | %.0f requests/s, p99 %.2f ms |" % (health[0], health[2]))


def stop_with_peak(daemon):
    """The daemon's peak RSS (KiB), read before it is stopped with SIGTERM."""
    with open("/proc/%d/status" % daemon.pid) as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(timeout=60)
    return peak


def intake_run(binary, schema, csv_path, name="visits.csv"):
    """carespool's full intake of one CSV file (`name` in the inbox) in a fresh spool: (seconds, peak RSS
    in KiB, stored rows, the database's schema)."""
    root = tempfile.mkdtemp(prefix="carespool-bench-keys-")
    try:
        spool = os.path.join(root, "spool")
        inbox = os.path.join(spool, "inbox", "intake")
        os.makedirs(inbox)
        log = open(os.path.join(root, "daemon.log"), "w")
        daemon = subprocess.Popen([binary, "serve", "--spool", spool, "--schema", schema, "--log-level", "warning",
                                   "--http", "off"], stderr=log)
        deadline = time.monotonic() + 30
        while not os.path.exists(os.path.join(spool, "processing", "retrying.json")):
            if time.monotonic() > deadline or daemon.poll() is not None:
                sys.exit("keys phase: the daemon did not start")
            time.sleep(0.01)
        staged = os.path.join(root, "staged.csv")
        shutil.copyfile(csv_path, staged)
        start = time.monotonic()
        os.rename(staged, os.path.join(inbox, name))
        done = os.path.join(spool, "done", "intake")
        failed = os.path.join(spool, "failed", "intake")
        deadline = time.monotonic() + 3600
        while not any(os.listdir(os.path.join(done, d)) for d in (os.listdir(done) if os.path.isdir(done) else [])) \
                and not (os.path.isdir(failed) and os.listdir(failed)):
            if time.monotonic() > deadline or daemon.poll() is not None:
                sys.exit("keys phase: the file was not finished")
            time.sleep(0.05)
        seconds = time.monotonic() - start
        peak = stop_with_peak(daemon)
        db = sqlite3.connect(os.path.join(spool, "carespool.sqlite3"))
        stored = db.execute("SELECT count(*) FROM visits").fetchone()[0]
        db.close()
        return seconds, peak, stored, schema_of(os.path.join(spool, "carespool.sqlite3"))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def keys_phase(binary, schema, rows, long):
    """Intake at scale on realistic keys: scrambled against ascending, carespool against the Python peer,
    and both against SQLite's own set-based load of the same rows into the same schema with the same page
    cache (the floor: what any writer of this data model pays SQLite, parsing and validation aside)."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    import intake_data, python_loader
    work = tempfile.mkdtemp(prefix="carespool-bench-keydata-")
    try:
        sizes = [rows] + ([10000000] if long else [])
        print("| keys phase: intake CSV | rows | MB | carespool s | carespool rows/s | peak RSS MiB "
              "| Python peer rows/s | carespool / Python | SQLite's floor s | carespool / floor |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        results = {}
        floors = {}
        for size in sizes:
            for ascending in ([True, False] if size == rows else [False]):
                label = "%s, %s keys" % ("{:,}".format(size), "ascending" if ascending else "scrambled")
                path = os.path.join(work, "keys-%d-%s.csv" % (size, "asc" if ascending else "scr"))
                intake_data.write(path, size, ascending=ascending)
                megabytes = os.path.getsize(path) / 1e6
                seconds, peak, stored, daemon_schema = intake_run(binary, schema, path)
                if stored != size:
                    sys.exit("keys phase: %s stored %d of %d rows" % (label, stored, size))
                peer = ""
                ratio = ""
                if not ascending:
                    database = os.path.join(work, "peer.sqlite3")
                    _, peer_stored, _, peer_seconds = python_loader.load(path, database)
                    os.remove(database)
                    peer = "%.0f" % (size / peer_seconds)
                    ratio = "%.2f" % (peer_seconds / seconds)
                raw_db = os.path.join(work, "raw.sqlite3")
                subprocess.run(["sqlite3", raw_db, ".import --csv %s raw" % path], check=True)
                floor_db = os.path.join(work, "floor.sqlite3")
                floor = data_model_floor(daemon_schema, raw_db, floor_db)
                for leftover in glob.glob(raw_db + "*") + glob.glob(floor_db + "*"):
                    os.remove(leftover)
                results[(size, ascending)] = size / seconds
                floors[(size, ascending)] = floor
                print("| %s | %d | %.1f | %.1f | %.0f | %.1f | %s | %s | %.1f | %.2f |"
                      % (label, size, megabytes, seconds, size / seconds, peak / 1024.0, peer, ratio, floor,
                         floor / seconds))
                os.remove(path)
        print("| scrambled / ascending rows/s (%s rows): carespool %.2f, SQLite's floor %.2f |"
              % ("{:,}".format(rows), results[(rows, False)] / results[(rows, True)],
                 floors[(rows, True)] / floors[(rows, False)]))
        if long:
            print("| 10M / 1M scrambled rows/s: carespool %.2f, SQLite's floor %.2f |"
                  % (results[(10000000, False)] / results[(rows, False)],
                     (10000000 / floors[(10000000, False)]) / (rows / floors[(rows, False)])))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def gzip_phase(binary, schema, rows):
    """A realistic intake file (bench/intake_data.py, scrambled keys) dropped plain and as .csv.gz (gzip
    level 6, as gzip(1) makes it), each into a fresh daemon: rows/s of each, their ratio, peak RSS of each."""
    import gzip
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    import intake_data
    work = tempfile.mkdtemp(prefix="carespool-bench-gzip-")
    try:
        plain = os.path.join(work, "visits.csv")
        intake_data.write(plain, rows, ascending=False)
        packed = plain + ".gz"
        with open(plain, "rb") as source, gzip.open(packed, "wb", compresslevel=6) as target:
            shutil.copyfileobj(source, target, 1 << 20)
        print("| gzip phase: intake CSV, scrambled keys | rows | MB on disk | s | rows/s | peak RSS MiB |")
        print("| --- | --- | --- | --- | --- | --- |")
        rates = {}
        for label, path, name in (("plain .csv", plain, "visits.csv"), (".csv.gz", packed, "visits.csv.gz")):
            seconds, peak, stored, _ = intake_run(binary, schema, path, name=name)
            if stored != rows:
                sys.exit("gzip phase: %s stored %d of %d rows" % (label, stored, rows))
            rates[label] = rows / seconds
            print("| %s | %d | %.1f | %.1f | %.0f | %.1f |"
                  % (label, rows, os.path.getsize(path) / 1e6, seconds, rows / seconds, peak / 1024.0))
        print("| .csv.gz / plain rows/s: %.2f (target at least 0.8) |" % (rates[".csv.gz"] / rates["plain .csv"]))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report_phase(binary, schema, rows, site=None):
    """A Zoom participants report as the portal exports it for an account (the one-table layout, US
    dates, 12-hour clock), `rows` joins over 300 clinic days of 40 recurring meetings — names with
    accents from a small pool (people come back), rejoins, a few guests without e-mail — dropped after the
    webhooks of every other day's visits, so that half its joins merge with webhooks and half make the
    reports' own visits: rows/s, peak RSS, and how the rows ended (stored, duplicates). `site`: a PostgreSQL
    store instead of the spool's SQLite file (bench/postgres.py's Server)."""
    import random
    rnd = random.Random(19)
    first = ["María José", "Zoë", "Łukasz", "Søren", "Amélie", "Chidi", "Nguyễn", "Ana", "Björn", "Siobhán",
             "José Luis", "Renée", "Dmitrij", "Aylin", "Kwame", "Ingrid", "Noémie", "Joaquín"]
    last = ["Ríos", "Okafor", "Wróbel", "Ångström", "Dubois", "Eze", "Văn An", "Núñez", "Şahin", "O'Brien",
            "Müller", "Pérez", "Kowalczyk", "Ferreira", "Nakamura", "Lindqvist"]
    people = ["%s %s" % (rnd.choice(first), rnd.choice(last)) for _ in range(600)]
    meetings = [str(81000000000 + rnd.randrange(10 ** 9)) for _ in range(40)]
    header = ("Topic,Meeting ID,User Name,User Email,Department,Group,Has Zoom Rooms,Creation Time,Start Time,"
              "End Time,Duration (Minutes),Participants,Name (Original Name),User Email,Join Time,Leave Time,"
              "Duration (Minutes),Guest,Recording Consent,In Waiting Room,Marketing Opt-In\n")
    chicago = datetime.timezone(datetime.timedelta(hours=-6))  # the days chosen are all in CST
    base = datetime.datetime(2026, 11, 9, 8, 0, tzinfo=chicago)

    def us(t):
        return t.strftime("%m/%d/%Y %I:%M %p")

    out = [header]
    events = []
    n = 0
    day = 0
    while n < rows:
        for m, meeting in enumerate(meetings):
            if n >= rows:
                break
            start = base + datetime.timedelta(days=day % 20, minutes=15 * m + 600 * (day // 20))
            end = start + datetime.timedelta(minutes=45)
            spaced = "%s %s %s" % (meeting[:3], meeting[3:7], meeting[7:])
            uuid = "v%d-%d==" % (day, m)
            webhooks = (day + m) % 2 == 0
            for p in rnd.sample(people, rnd.randrange(3, 12)):
                joins = [start + datetime.timedelta(minutes=rnd.randrange(0, 10))]
                if rnd.random() < 0.15:
                    joins.append(joins[0] + datetime.timedelta(minutes=rnd.randrange(12, 20)))
                for k, join in enumerate(joins):
                    leave = join + datetime.timedelta(minutes=rnd.randrange(1, 10) if k + 1 < len(joins) else 35)
                    leave = min(leave, end)
                    email = "" if rnd.random() < 0.05 else p.lower().replace(" ", ".").replace("'", "") + "@example.org"
                    name = '"%s"' % p if "," in p else p
                    out.append("Consulta,%s,Dr. Núñez,host@clinic.example,Cardiología,,No,%s,%s,%s,45,%d,%s,%s,%s,%s,%d,%s,Yes,No,-\n"
                               % (spaced, us(start - datetime.timedelta(days=2)), us(start), us(end), 5, name, email,
                                  us(join), us(leave), (leave - join).seconds // 60, "Yes" if not email else "No"))
                    n += 1
                    if webhooks:
                        who = {"user_id": str(16778240 + n), "user_name": p, "email": email}
                        iso = lambda t: t.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
                        for name_, t, field in (("meeting.participant_joined", join, "join_time"),
                                                ("meeting.participant_left", leave, "leave_time")):
                            obj = dict(who)
                            obj[field] = iso(t)
                            events.append(json.dumps({"event": name_, "event_ts": int(t.timestamp() * 1000),
                                                      "payload": {"account_id": "acc", "object": {
                                                          "id": meeting, "uuid": uuid, "participant": obj}}}))
            day += 1 if m == len(meetings) - 1 else 0
        day += 1
    rows = n  # a visit's joins are all written: a few more than asked
    root = tempfile.mkdtemp(prefix="carespool-bench-report-")
    try:
        spool = os.path.join(root, "spool")
        config = os.path.join(root, "carespool.toml")
        with open(config, "w") as f:
            f.write('[zoom_report]\ntimezone = "America/Chicago"\n')
        log = open(os.path.join(root, "daemon.log"), "w")
        store = []
        if site is not None:
            url, password_file = site.fresh_database()
            store = ["--db", url, "--db-password-file", password_file, "--host-name", "host-0"]
        daemon = subprocess.Popen([binary, "serve", "--config", config, "--spool", spool, "--schema", schema,
                                   "--log-level", "warning", "--http", "off"] + store, stderr=log)
        deadline = time.monotonic() + 30
        while not os.path.exists(os.path.join(spool, "processing", "retrying.json")):
            if time.monotonic() > deadline or daemon.poll() is not None:
                sys.exit("report phase: the daemon did not start")
            time.sleep(0.01)

        def drop(kind, name, data):
            staged = os.path.join(root, "staged")
            with open(staged, "w", encoding="utf-8") as f:
                f.write(data)
            os.rename(staged, os.path.join(spool, "inbox", kind, name))

        def finished(kind):
            done = os.path.join(spool, "done", kind)
            return sum(len(os.listdir(os.path.join(done, d))) for d in os.listdir(done)) if os.path.isdir(done) else 0

        drop("zoom", "events.ndjson", "\n".join(events) + "\n")
        deadline = time.monotonic() + 1800
        while finished("zoom") < 1:
            if time.monotonic() > deadline:
                sys.exit("report phase: the webhooks were not finished")
            time.sleep(0.05)
        text = "".join(out)
        start = time.monotonic()
        drop("zoom-report", "participants.csv", text)
        while finished("zoom-report") < 1:
            if time.monotonic() > deadline or daemon.poll() is not None:
                sys.exit("report phase: the report was not finished")
            time.sleep(0.05)
        seconds = time.monotonic() - start
        peak = stop_with_peak(daemon)
        if site is None:
            db = sqlite3.connect(os.path.join(spool, "carespool.sqlite3"))
            stored, duplicates, rejected = db.execute(
                "SELECT stored, duplicates, rejected FROM files WHERE kind = 'zoom-report'").fetchone()
            sources = dict(db.execute("SELECT source, count(*) FROM zoom_visit_intervals GROUP BY source").fetchall())
            db.close()
        else:
            stored, duplicates, rejected = (int(v) for v in site.psql(
                "SELECT stored, duplicates, rejected FROM files WHERE kind = 'zoom-report'", "site").split("|"))
            sources = dict((source, int(count)) for source, count in (line.split("|") for line in site.psql(
                "SELECT source, count(*) FROM zoom_visit_intervals GROUP BY source", "site").splitlines()))
        if stored + duplicates != rows or rejected:
            sys.exit("report phase: %d stored + %d duplicates + %d rejected of %d rows" % (stored, duplicates, rejected, rows))
        print("| report phase%s: one-table export, %d rows, %.1f MB, %d webhook events first | s | rows/s | peak RSS MiB |"
              % ("" if site is None else " into PostgreSQL", rows, len(text.encode()) / 1e6, len(events)))
        print("| --- | --- | --- | --- |")
        print("| stored %d, duplicates %d; intervals %s | %.1f | %.0f | %.1f |"
              % (stored, duplicates, ", ".join("%s %d" % kv for kv in sorted(sources.items())), seconds, rows / seconds,
                 peak / 1024.0))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def backlog_phase(binary, schema, files):
    """`files` small intake CSV files (intake is always streamed, one file a step) already in the inbox when
    the daemon starts, as after an outage of the daemon while partners kept dropping: seconds from the
    start to the last in done/. Each step took one of them and the next waited for a tick (200 ms) until
    a step that leaves files queued was followed by the next at once."""
    import random
    rnd = random.Random(20)
    names = ["Zoë Núñez", "José Ålander", "Siobhán O'Brien", "Łukasz Wróbel", "Amélie Dubois"]
    root = tempfile.mkdtemp(prefix="carespool-bench-backlog-")
    try:
        spool = os.path.join(root, "spool")
        inbox = os.path.join(spool, "inbox", "intake")
        os.makedirs(inbox)
        for n in range(files):
            first, last = rnd.choice(names).split(" ", 1)
            with open(os.path.join(inbox, "visits-%04d.csv" % n), "w", encoding="utf-8") as f:
                f.write("visit_date,mrn,last_name,first_name,reason,birth_date,visit_account_number\n")
                for k in range(rnd.randrange(1, 20)):
                    f.write('2025-0%d-1%d,M-%d,%s,%s,"suivi, contrôle",1980-01-0%d,V-%d-%d\n'
                            % (1 + k % 9, k % 10, rnd.randrange(files), last, first, 1 + k % 9, n, k))
        start = time.monotonic()
        daemon = subprocess.Popen([binary, "serve", "--spool", spool, "--schema", schema, "--log-level", "warning",
                                   "--http", "off"], stderr=subprocess.DEVNULL)
        done = os.path.join(spool, "done", "intake")
        count = lambda: sum(len([x for x in os.listdir(os.path.join(done, d)) if x.endswith(".csv")])
                            for d in os.listdir(done)) if os.path.isdir(done) else 0
        deadline = time.monotonic() + 600
        while count() < files:
            if time.monotonic() > deadline or daemon.poll() is not None:
                sys.exit("backlog phase: the files were not finished")
            time.sleep(0.02)
        seconds = time.monotonic() - start
        stop_with_peak(daemon)
        print("| backlog: %d small intake files in the inbox at start | %.1f s, %.0f files/s |"
              % (files, seconds, files / seconds))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def shapes_phase(binary, schema, size, runs):
    """Each adversarial shape of bench/shapes.py (and the plain file of its kind it is measured against),
    dropped alone into a fresh daemon: MB/s from the drop to its verdict (done/ or failed/), the daemon's
    peak RSS, and the ratio of its MB/s to the plain file's (target: within 3x, ratio >= 0.33). Each is
    run `runs` times and its fastest run kept (the highest peak RSS): on a shared virtual machine a
    single run of the same file varied by half its time."""
    import glob
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import shapes
    rows = []
    for kind, name, suffix, data in shapes.shapes(size):
        best = None
        for _ in range(runs):
            row = shape_run(binary, schema, kind, name, suffix, data, glob)
            best = row if best is None or row[3] < best[3] else best
            best = best[:4] + (max(best[4], row[4]),) + best[5:]
        rows.append(best)
    print_shapes(size, rows)


def shape_run(binary, schema, kind, name, suffix, data, glob):
    """One run of one shape in a fresh daemon: (kind, name, bytes, seconds, peak MiB, outcome, stored,
    rejected)."""
    root = tempfile.mkdtemp(prefix="carespool-bench-shape-")
    spool = os.path.join(root, "spool")
    os.makedirs(os.path.join(spool, "inbox", kind))
    log = open(os.path.join(root, "daemon.log"), "w")
    daemon = subprocess.Popen([binary, "serve", "--spool", spool, "--schema", schema, "--log-level", "warning",
                               "--http", "off"], stderr=log)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(os.path.join(spool, "processing", "retrying.json")):
            if time.monotonic() > deadline or daemon.poll() is not None:
                sys.exit("shapes: daemon did not start; see " + log.name)
            time.sleep(0.01)
        staged = os.path.join(root, "staged")
        with open(staged, "wb") as f:
            f.write(data)
        file_name = "%s.%s" % (name, suffix)
        begin = time.monotonic()
        os.rename(staged, os.path.join(spool, "inbox", kind, file_name))
        where = None
        while where is None:
            if glob.glob(os.path.join(spool, "done", kind, "*", "*--" + file_name)):
                where = "done"
            elif glob.glob(os.path.join(spool, "failed", kind, "*--" + file_name)):
                where = "failed"
            elif daemon.poll() is not None or time.monotonic() - begin > 600:
                sys.exit("shapes: %s never finished; see %s" % (name, log.name))
            else:
                time.sleep(0.005)
        seconds = time.monotonic() - begin
        with open("/proc/%d/status" % daemon.pid) as f:
            peak_kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        db = sqlite3.connect(os.path.join(spool, "carespool.sqlite3"))
        outcome, stored, rejected = db.execute("SELECT outcome, stored, rejected FROM files").fetchone()
        db.close()
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
        shutil.rmtree(root, ignore_errors=True)
    return (kind, name, len(data), seconds, peak_kib / 1024.0, outcome, stored, rejected)


def print_shapes(size, rows):
    plain = {kind: r for r in rows for kind in [r[0]] if r[1].startswith("plain")}
    print("| adversarial shapes (%d MB each, one per fresh daemon) | MB/s | ratio to plain | peak RSS | verdict |" % (size // 1000000))
    print("| --- | --- | --- | --- | --- |")
    for kind, name, length, seconds, peak, outcome, stored, rejected in rows:
        rate = length / seconds / 1e6
        base = plain[kind]
        ratio = rate / (base[2] / base[3] / 1e6)
        print("| %s: %s | %.1f | %.2f | %.1f MiB | %s, %d stored, %d rejected |"
              % (kind, name, rate, ratio, peak, outcome, stored, rejected))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--intake-rows", type=int, default=1000000)
    ap.add_argument("--csv-parse-bench", help="path of the csv-parse-bench binary (parsing-only speed)")
    ap.add_argument("--http-seconds", type=int, default=20)
    ap.add_argument("--only", help="run only this phase: files, zoom, intake, http, shapes, keys, gzip, report, backlog, "
                    "postgres")
    ap.add_argument("--report-rows", type=int, default=200000, help="rows of the report phase's export")
    ap.add_argument("--shape-bytes", type=int, default=8000000)
    ap.add_argument("--shape-runs", type=int, default=3, help="runs of each shape; the fastest is kept")
    ap.add_argument("--keys-rows", type=int, default=1000000, help="rows of the keys phase's files")
    ap.add_argument("--long", action="store_true", help="the keys phase adds a 10,000,000-row scrambled file")
    args = ap.parse_args()

    schema = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "schema.json")
    if args.only not in (None, "files", "zoom", "intake", "http", "shapes", "keys", "gzip", "report", "backlog",
                         "postgres"):
        sys.exit("--only: one of files, zoom, intake, http, shapes, keys, gzip, report, postgres")

    def want(phase):
        return args.only in (None, phase)

    statuses = []
    roots = []

    def start_daemon(label, kind="appointments"):
        """A fresh spool and daemon; returns (daemon, inbox, watcher on done/<kind>/<today>/)."""
        root = tempfile.mkdtemp(prefix="carespool-bench-%s-" % label)
        roots.append(root)
        spool = os.path.join(root, "spool")
        inbox = os.path.join(spool, "inbox", kind)
        day = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
        done = os.path.join(spool, "done", kind, day)
        os.makedirs(inbox)
        os.makedirs(done)
        log = open(os.path.join(root, "daemon.log"), "w")
        daemon = subprocess.Popen([args.binary, "serve", "--spool", spool, "--schema", schema, "--log-level", "warning", "--http", "off"],
                                  stderr=log)
        deadline = time.monotonic() + 30
        while not os.path.exists(os.path.join(spool, "processing", "retrying.json")):
            if time.monotonic() > deadline or daemon.poll() is not None:
                sys.exit("daemon did not start; see " + log.name)
            time.sleep(0.01)
        watcher = DoneWatcher(done)
        watcher.start()
        return daemon, inbox, watcher

    def stop(daemon):
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        return daemon.returncode

    daemons = []
    try:
        if want("files"):
            # Phase 1: throughput. rsync writes each file under a dot-temp name in the destination folder,
            # then renames it. The temp files are written first (the daemon ignores dotfiles); the clock
            # starts at the first rename and stops when the last file arrives in done/.
            daemon, inbox, watcher = start_daemon("throughput")
            daemons.append(daemon)
            temps = []
            for n in range(args.files):
                temp = os.path.join(inbox, ".t%d.json.Xq9" % n)
                with open(temp, "wb") as f:
                    f.write(event(n, "T"))
                temps.append((temp, os.path.join(inbox, "t%d.json" % n)))
            time.sleep(1)
            start = time.monotonic()
            for temp, final in temps:
                os.rename(temp, final)
            dropped = time.monotonic()
            deadline = time.monotonic() + 300
            while watcher.count("t") < args.files:
                if time.monotonic() > deadline:
                    sys.exit("phase 1: only %d of %d files reached done/" % (watcher.count("t"), args.files))
                time.sleep(0.005)
            last = max(watcher.arrivals[k] for k in watcher.arrivals if k.startswith("t"))
            throughput = args.files / (last - start)
            statuses.append(stop(daemon))

        if want("files"):
            # Phase 2: latency at a steady rate, on a fresh spool and daemon.
            daemon, inbox, watcher = start_daemon("latency")
            daemons.append(daemon)
            total = args.rate * args.seconds
            dropped_at = {}
            begin = time.monotonic()
            for n in range(total):
                due = begin + n / args.rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                name = "l%d.json" % n
                temp = os.path.join(inbox, "." + name + ".Xq9")
                with open(temp, "wb") as f:
                    f.write(event(n, "L"))
                os.rename(temp, os.path.join(inbox, name))
                dropped_at[name] = time.monotonic()
            achieved = total / (time.monotonic() - begin)
            deadline = time.monotonic() + 120
            while watcher.count("l") < total:
                if time.monotonic() > deadline:
                    sys.exit("phase 2: only %d of %d files reached done/" % (watcher.count("l"), total))
                time.sleep(0.01)
            latencies = [(watcher.arrivals[k] - dropped_at[k]) * 1000 for k in dropped_at]
            if os.environ.get("BENCH_DEBUG"):
                worst = sorted(((watcher.arrivals[k] - dropped_at[k]) * 1000, dropped_at[k] - begin, k) for k in dropped_at)
                for lat, at, k in worst[-15:]:
                    print("slow: %s dropped at %.3f s, %.1f ms" % (k, at, lat))
            statuses.append(stop(daemon))

        if want("zoom"):
            # Phase 3: a 50 MB Zoom NDJSON export, streamed; rows/s and the daemon's peak resident memory.
            daemon, inbox, watcher = start_daemon("zoom-export", "zoom")
            daemons.append(daemon)
            staged = os.path.join(os.path.dirname(inbox), "..", "export.ndjson")
            rows = 0
            with open(staged, "w") as f:
                pad = "x" * 270
                while f.tell() < 50 * 1000 * 1000:
                    f.write('{"event":"meeting.participant_joined","event_ts":%d,"payload":{"account_id":"acc",'
                            '"object":{"id":%d,"uuid":"v%d==","participant":{"user_id":"u%d","user_name":"P%d",'
                            '"join_time":"2024-01-01T10:00:00Z"},"topic":"%s"}}}\n'
                            % (1700000000000 + rows, 80000000000 + rows % 500, rows % 500, rows, rows, pad))
                    rows += 1
                export_bytes = f.tell()
            export_start = time.monotonic()
            os.rename(staged, os.path.join(inbox, "export.ndjson"))
            deadline = time.monotonic() + 600
            while watcher.count("export") < 1:
                if time.monotonic() > deadline:
                    sys.exit("phase 3: the export did not reach done/")
                time.sleep(0.01)
            export_seconds = watcher.arrivals["export.ndjson"] - export_start
            with open("/proc/%d/status" % daemon.pid) as f:
                peak_kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
            statuses.append(stop(daemon))

        if want("intake"):
            # Phase 4: intake. A 1,000,000-row CSV (30% of rows repeat an earlier MRN) into a raw table by
            # `sqlite3 .import` (the near-limit: no validation, no normalisation), then carespool's full intake.
            daemon, inbox, watcher = start_daemon("intake", "intake")
            daemons.append(daemon)
            work = os.path.dirname(os.path.dirname(os.path.dirname(inbox)))
            csv_path = os.path.join(work, "intake.csv")
            intake_rows = args.intake_rows
            with open(csv_path, "w") as f:
                f.write("mrn,first_name,last_name,birth_date,visit_account_number,visit_date,reason\n")
                for n in range(intake_rows):
                    mrn = n - 7 if (n % 10 < 3 and n >= 10) else n
                    f.write("MRN%d,First%d,Last%d,1980-01-%02d,VAN%d,2025-03-01,follow-up visit\n"
                            % (mrn, n % 97, n % 89, 1 + n % 28, n))
            csv_bytes = os.path.getsize(csv_path)
            parse_only = None
            if args.csv_parse_bench:
                out = subprocess.run([args.csv_parse_bench, csv_path], check=True, capture_output=True, text=True).stdout
                parse_only = int(out.split("rows/s")[1].strip())
            raw_db = os.path.join(work, "raw.sqlite3")
            begin_import = time.monotonic()
            subprocess.run(["sqlite3", raw_db, ".import --csv %s raw" % csv_path], check=True)
            import_seconds = time.monotonic() - begin_import
            intake_start = time.monotonic()
            os.rename(csv_path, os.path.join(inbox, "intake.csv"))
            deadline = time.monotonic() + 1200
            while watcher.count("intake") < 1:
                if time.monotonic() > deadline:
                    sys.exit("phase 4: the intake file did not reach done/")
                time.sleep(0.02)
            intake_seconds = watcher.arrivals["intake.csv"] - intake_start
            with open("/proc/%d/status" % daemon.pid) as f:
                intake_peak_kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
            statuses.append(stop(daemon))
            floor_seconds = data_model_floor(schema_of(os.path.join(os.path.dirname(os.path.dirname(inbox)),
                                                                    "carespool.sqlite3")),
                                             raw_db, os.path.join(work, "floor.sqlite3"))
            leanest_seconds = leanest_floor(raw_db, os.path.join(work, "leanest.sqlite3"))

        print("carespool benchmark (%s, %d cores)" % (os.uname().machine, os.cpu_count()))
        print("| measure | value |")
        print("| --- | --- |")
        if want("files"):
            print("| files (phase 1) | %d single-event files, rsync style (dot-temp written, then renamed) |" % args.files)
            print("| rename time (phase 1) | %.2f s (%.0f files/s offered) |" % (dropped - start, args.files / (dropped - start)))
            print("| throughput, first drop to last file in done/ | %.0f files/s |" % throughput)
            print("| steady rate offered (phase 2, fresh spool) | %.0f files/s for %d s (%d files) |" % (achieved, args.seconds, total))
            print("| drop->done latency p50 | %.1f ms |" % percentile(latencies, 50))
            print("| drop->done latency p90 | %.1f ms |" % percentile(latencies, 90))
            print("| drop->done latency p99 | %.1f ms |" % percentile(latencies, 99))
            print("| drop->done latency max | %.1f ms |" % max(latencies))
        if want("zoom"):
            print("| Zoom NDJSON export (phase 3, streamed) | %d rows, %.1f MB |" % (rows, export_bytes / 1e6))
            print("| export ingest | %.1f s, %.0f rows/s |" % (export_seconds, rows / export_seconds))
            print("| daemon peak resident memory (VmHWM) during the export | %.1f MiB |" % (peak_kib / 1024.0))
        if want("intake"):
            import_rate = intake_rows / import_seconds
            intake_rate = intake_rows / intake_seconds
            print("| intake CSV (phase 4) | %d rows, %.1f MB, 30%% repeated MRNs |" % (intake_rows, csv_bytes / 1e6))
            if parse_only is not None:
                print("| CSV reader alone, parsing only (csv-parse-bench) | %d rows/s |" % parse_only)
            print("| sqlite3 .import into one raw table | %.1f s, %.0f rows/s |" % (import_seconds, import_rate))
            print("| carespool full intake (validate, normalise, dedupe) | %.1f s, %.0f rows/s |" % (intake_seconds, intake_rate))
            print("| ratio carespool / sqlite3 .import | %.2f |" % (intake_rate / import_rate))
            print("| daemon peak resident memory (VmHWM) during the intake | %.1f MiB |" % (intake_peak_kib / 1024.0))
            floor_rate = intake_rows / floor_seconds
            print("| the data model's floor: the same rows set-based into carespool's schema by sqlite3 (no validation, no history) | %.1f s, %.0f rows/s, ratio %.2f |"
                  % (floor_seconds, floor_rate, floor_rate / import_rate))
            leanest_rate = intake_rows / leanest_seconds
            print("| the leanest schema's floor: the same, into patients/persons/visits with integer file references, no per-file indexes, no history table | %.1f s, %.0f rows/s, ratio %.2f |"
                  % (leanest_seconds, leanest_rate, leanest_rate / import_rate))
        print("| daemon exit statuses after SIGTERM | %s |" % ", ".join(str(s) for s in statuses))
        if want("http"):
            http_phase(args.binary, schema, args.http_seconds)
        if want("keys"):
            print()
            keys_phase(args.binary, schema, args.keys_rows, args.long)
        if want("gzip"):
            print()
            gzip_phase(args.binary, schema, args.keys_rows)
        if want("report"):
            print()
            report_phase(args.binary, schema, args.report_rows)
        if want("backlog"):
            print()
            backlog_phase(args.binary, schema, 500)
        if want("shapes"):
            print()
            shapes_phase(args.binary, schema, args.shape_bytes, args.shape_runs)
        if want("postgres"):
            print()
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            import postgres
            postgres.phase(args.binary, schema, args.files, args.intake_rows, event,
                           lambda site: report_phase(args.binary, schema, args.report_rows, site=site))
    finally:
        for daemon in daemons:
            if daemon.poll() is None:
                daemon.kill()
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
