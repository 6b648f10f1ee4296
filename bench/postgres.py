"""The PostgreSQL phase of the benchmark: carespool hosts against one PostgreSQL database, on this machine,
in the same run as the SQLite phases.

- files/s: single-event files dropped rsync style into one host, then into two hosts at once (each its
  own spool and its own files), against one database; first rename to the last file in done/;
- intake at scale: a realistic 1,000,000-row intake CSV (bench/intake_data.py: accented names, quoted
  reasons, repeated patients, columns in an order of their own), with ascending and with scrambled MRNs
  and visit numbers, into a fresh database by carespool, against `psql \\copy` of the same file into one
  unindexed table (the near-limit) as a ratio, and carespool's peak RSS; and PostgreSQL's own floor for the
  data model (the same rows loaded set-based by plain SQL into carespool's tables); and the issue's choice
  of staging, COPY into a temporary table or `unnest` arrays, chunk by chunk (staging_run).
- the report phase of bench.py (a Zoom participants report after its webhooks) into PostgreSQL.

The server is Debian's PostgreSQL, started here (initdb + pg_ctl as the postgres user, a Unix socket in a
temporary folder only) with its defaults: fsync on, synchronous_commit on (a real site's durability).
"""
import glob, os, secrets, shutil, signal, subprocess, sys, tempfile, time


def binaries():
    versions = sorted(int(v) for v in os.listdir("/usr/lib/postgresql") if v.isdigit())
    if not versions:
        sys.exit("postgres phase: no PostgreSQL server (apt-get install postgresql)")
    return "/usr/lib/postgresql/%d/bin" % versions[-1]


class Server:
    def __init__(self):
        self.bin = binaries()
        self.folder = tempfile.mkdtemp(prefix="carespool-bench-pg-")
        self.password = secrets.token_hex(12)
        with open(os.path.join(self.folder, "superuser.pw"), "w") as f:
            f.write(self.password)
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
            shutil.chown(os.path.join(self.folder, "superuser.pw"), "postgres", "postgres")
        self.run([self.bin + "/initdb", "-D", self.folder + "/data", "-U", "postgres", "-E", "UTF8", "--no-locale",
                  "--no-instructions", "--auth-local=scram-sha-256", "--auth-host=reject",
                  "--pwfile=" + self.folder + "/superuser.pw"])
        with open(self.folder + "/data/postgresql.conf", "a") as f:
            f.write("listen_addresses = ''\nunix_socket_directories = '%s'\nport = 5432\n" % self.folder)
        self.run([self.bin + "/pg_ctl", "-D", self.folder + "/data", "-l", self.folder + "/server.log", "-w", "start"])

    def run(self, argv, **kwargs):
        if os.geteuid() == 0:
            argv = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"] + argv
        return subprocess.run(argv, check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)

    def psql(self, sql, database="postgres"):
        env = dict(os.environ, PGPASSWORD=self.password)
        return subprocess.run([self.bin + "/psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", self.folder,
                               "-U", "postgres", "-d", database, "-c", sql],
                              check=True, capture_output=True, text=True, env=env).stdout.strip()

    def fresh_database(self, name="site"):
        """A new database owned by role carespool; returns (url, password file)."""
        self.psql("DROP DATABASE IF EXISTS %s" % name)
        password = secrets.token_hex(12)
        if not self.psql("SELECT 1 FROM pg_roles WHERE rolname = 'carespool'"):
            self.psql("CREATE ROLE carespool LOGIN PASSWORD '%s'" % password)
        else:
            self.psql("ALTER ROLE carespool PASSWORD '%s'" % password)
        self.psql("CREATE DATABASE %s OWNER carespool" % name)
        path = os.path.join(self.folder, "carespool.pw")
        with open(path, "w") as f:
            f.write(password)
        os.chmod(path, 0o600)
        return "postgres://carespool@/%s?host=%s" % (name, self.folder), path

    def stop(self):
        try:
            self.run([self.bin + "/pg_ctl", "-D", self.folder + "/data", "-m", "fast", "-w", "stop"])
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def serve(binary, schema, spool, url, password_file, host):
    os.makedirs(spool, exist_ok=True)
    log = open(spool + ".log", "w")
    daemon = subprocess.Popen([binary, "serve", "--spool", spool, "--schema", schema, "--log-level", "warning",
                               "--http", "off", "--db", url, "--db-password-file", password_file,
                               "--host-name", host], stderr=log)
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(spool, "processing", "retrying.json")):
        if time.monotonic() > deadline or daemon.poll() is not None:
            sys.exit("postgres phase: the daemon did not start; see " + log.name)
        time.sleep(0.01)
    return daemon


def peak_and_stop(daemon):
    with open("/proc/%d/status" % daemon.pid) as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(timeout=60)
    return peak


def done_count(spool, kind):
    return sum(len(os.listdir(d)) for d in glob.glob(os.path.join(spool, "done", kind, "*")) if os.path.isdir(d))


def files_run(binary, schema, server, work, hosts, files, event):
    """`files` single-event files spread over `hosts` hosts against one fresh database: files/s."""
    url, password_file = server.fresh_database()
    spools = [os.path.join(work, "files-%d-%d" % (hosts, n)) for n in range(hosts)]
    daemons = [serve(binary, schema, spool, url, password_file, "host-%d" % n) for n, spool in enumerate(spools)]
    try:
        temps = []
        for n in range(files):
            inbox = os.path.join(spools[n % hosts], "inbox", "appointments")
            os.makedirs(inbox, exist_ok=True)
            temp = os.path.join(inbox, ".t%d.json.Xq9" % n)
            with open(temp, "wb") as f:
                f.write(event(n, "H%d" % hosts))
            temps.append((temp, os.path.join(inbox, "t%d.json" % n)))
        time.sleep(1)
        start = time.monotonic()
        for temp, final in temps:
            os.rename(temp, final)
        deadline = time.monotonic() + 600
        while sum(done_count(spool, "appointments") for spool in spools) < files:
            if time.monotonic() > deadline:
                sys.exit("postgres phase: the files did not reach done/")
            time.sleep(0.01)
        seconds = time.monotonic() - start
    finally:
        for daemon in daemons:
            peak_and_stop(daemon)
    stored = int(server.psql("SELECT count(*) FROM appointment_events", "site"))
    if stored != files:
        sys.exit("postgres phase: %d of %d events stored" % (stored, files))
    return files / seconds


def intake_run(binary, schema, server, work, path, rows):
    """(psql \\copy seconds, carespool seconds, carespool peak RSS KiB) of one intake file."""
    url, password_file = server.fresh_database()
    with open(path, encoding="utf-8") as f:
        columns = f.readline().strip().split(",")
    server.psql("CREATE TABLE raw (%s)" % ", ".join("%s text" % c for c in columns), "site")
    env = dict(os.environ, PGPASSWORD=server.password)
    start = time.monotonic()
    subprocess.run([server.bin + "/psql", "-X", "-q", "-h", server.folder, "-U", "postgres", "-d", "site",
                    "-c", "\\copy raw FROM '%s' WITH (FORMAT csv, HEADER true)" % path], check=True, env=env)
    copy_seconds = time.monotonic() - start
    server.psql("DROP TABLE raw", "site")
    spool = os.path.join(work, "intake-%d" % int(time.monotonic() * 1000))
    daemon = serve(binary, schema, spool, url, password_file, "host-0")
    try:
        inbox = os.path.join(spool, "inbox", "intake")
        os.makedirs(inbox, exist_ok=True)
        staged = os.path.join(spool, "staged.csv")
        shutil.copyfile(path, staged)
        start = time.monotonic()
        os.rename(staged, os.path.join(inbox, "visits.csv"))
        deadline = time.monotonic() + 3600
        while done_count(spool, "intake") < 1:
            failed = os.path.join(spool, "failed", "intake")
            if time.monotonic() > deadline or daemon.poll() is not None or (
                    os.path.isdir(failed) and os.listdir(failed)):
                sys.exit("postgres phase: the intake file was not stored; see " + spool + ".log")
            time.sleep(0.05)
        seconds = time.monotonic() - start
    finally:
        peak = peak_and_stop(daemon)
    stored = int(server.psql("SELECT count(*) FROM visits", "site"))
    if stored != rows:
        sys.exit("postgres phase: %d of %d visits stored" % (stored, rows))
    return copy_seconds, seconds, peak


def floor_run(binary, server, path):
    """PostgreSQL's floor for this data model: the file's rows, already in a raw table, loaded set-based by
    plain SQL into carespool's migrated tables (patients, one person each, visits; no validation, no
    history, no duplicate or conflict handling): what any writer of this model pays PostgreSQL. Seconds."""
    url, password_file = server.fresh_database()
    subprocess.run([binary, "migrate", "--db", url, "--db-password-file", password_file], check=True,
                   capture_output=True)
    with open(path, encoding="utf-8") as f:
        columns = f.readline().strip().split(",")
    server.psql("CREATE TABLE raw (%s)" % ", ".join("%s text" % c for c in columns), "site")
    env = dict(os.environ, PGPASSWORD=server.password)
    subprocess.run([server.bin + "/psql", "-X", "-q", "-h", server.folder, "-U", "postgres", "-d", "site",
                    "-c", "\\copy raw FROM '%s' WITH (FORMAT csv, HEADER true)" % path], check=True, env=env)
    server.psql("ANALYZE raw", "site")
    start = time.monotonic()
    server.psql(
        "BEGIN;"
        "INSERT INTO files (id, kind, original_name, sha256, size, received_at, finished_at, outcome, report, host)"
        " VALUES ('floor', 'intake', 'floor.csv', repeat('0', 64), 0, '', '', 'accepted', '{}', 'floor');"
        "INSERT INTO patients (mrn, file_id) SELECT DISTINCT mrn, 'floor' FROM raw;"
        "INSERT INTO persons (patient_id, first_name, last_name, birth_date, file_id)"
        " SELECT DISTINCT ON (r.mrn) p.id, r.first_name, r.last_name, r.birth_date, 'floor'"
        " FROM raw r JOIN patients p ON p.mrn = r.mrn ORDER BY r.mrn;"
        "INSERT INTO visits (visit_account_number, patient_id, visit_date, reason, file_id, record)"
        " SELECT r.visit_account_number, p.id, r.visit_date, nullif(r.reason, ''), 'floor', 0"
        " FROM raw r JOIN patients p ON p.mrn = r.mrn;"
        "COMMIT;", "site")
    return time.monotonic() - start


def staging_run(binary, server, work, path, method):
    """The issue's question, COPY into a temporary table or `unnest` arrays: the same file's patients and
    visits written in chunks of 2,000 rows, each chunk its own transaction (synchronous_commit off, as
    carespool's chunks), staged by `COPY stage FROM STDIN` then `INSERT … SELECT … ON CONFLICT`, or
    inserted straight from `unnest` of the chunk's columns. The same statements after the staging, the
    data sent as text both ways (psql), the script made before the clock starts. Seconds."""
    import csv
    url, password_file = server.fresh_database()
    subprocess.run([binary, "migrate", "--db", url, "--db-password-file", password_file], check=True,
                   capture_output=True)
    script = os.path.join(work, "staging-%s.sql" % method)
    quote = lambda text: "'" + text.replace("'", "''") + "'"
    array = lambda values: "ARRAY[%s]::text[]" % ",".join(quote(v) for v in values)
    with open(path, encoding="utf-8", newline="") as f, open(script, "w", encoding="utf-8") as out:
        rows = csv.DictReader(f)
        out.write("SET synchronous_commit = off;\n"
                  "INSERT INTO files (id, kind, original_name, sha256, size, received_at, finished_at, outcome,"
                  " report, host) VALUES ('stage', 'intake', 'stage.csv', repeat('0', 64), 0, '', '', 'accepted',"
                  " '{}', 'stage');\n")
        if method == "copy":
            out.write("CREATE TEMPORARY TABLE stage (mrn text, visit_account_number text, visit_date text,"
                      " reason text) ON COMMIT DELETE ROWS;\n")
        chunk = []

        def flush():
            if method == "copy":
                out.write("BEGIN;\nCOPY stage FROM STDIN WITH (FORMAT csv);\n")
                writer = csv.writer(out, lineterminator="\n")
                for r in chunk:
                    writer.writerow([r["mrn"], r["visit_account_number"], r["visit_date"], r["reason"]])
                out.write("\\.\n"
                          "INSERT INTO patients (mrn, file_id) SELECT DISTINCT mrn, 'stage' FROM stage"
                          " ON CONFLICT DO NOTHING;\n"
                          "INSERT INTO visits (visit_account_number, patient_id, visit_date, reason, file_id, record)"
                          " SELECT s.visit_account_number, p.id, s.visit_date, nullif(s.reason, ''), 'stage', 0"
                          " FROM stage s JOIN patients p ON p.mrn = s.mrn ON CONFLICT DO NOTHING;\nCOMMIT;\n")
            else:
                mrns = array(r["mrn"] for r in chunk)
                out.write("BEGIN;\n"
                          "INSERT INTO patients (mrn, file_id) SELECT DISTINCT m, 'stage' FROM unnest(%s) AS m"
                          " ON CONFLICT DO NOTHING;\n"
                          "INSERT INTO visits (visit_account_number, patient_id, visit_date, reason, file_id, record)"
                          " SELECT c.v, p.id, c.d, nullif(c.r, ''), 'stage', 0 FROM unnest(%s, %s, %s, %s)"
                          " AS c (m, v, d, r) JOIN patients p ON p.mrn = c.m ON CONFLICT DO NOTHING;\nCOMMIT;\n"
                          % (mrns, mrns, array(r["visit_account_number"] for r in chunk),
                             array(r["visit_date"] for r in chunk), array(r["reason"] for r in chunk)))
            chunk.clear()

        for row in rows:
            chunk.append(row)
            if len(chunk) == 2000:
                flush()
        if chunk:
            flush()
    env = dict(os.environ, PGPASSWORD=server.password)
    start = time.monotonic()
    subprocess.run([server.bin + "/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", server.folder, "-U", "postgres",
                    "-d", "site", "-f", script], check=True, env=env, stdout=subprocess.DEVNULL)
    seconds = time.monotonic() - start
    os.remove(script)
    return seconds


def phase(binary, schema, files, rows, event, report):
    """The PostgreSQL rows of `make bench`; `report(server)` runs the report phase against the server."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    import intake_data
    server = Server()
    work = tempfile.mkdtemp(prefix="carespool-bench-pgwork-")
    try:
        version = server.psql("SHOW server_version")
        print("| PostgreSQL %s on this machine (fsync on, synchronous_commit on) | value |" % version)
        print("| --- | --- |")
        one = files_run(binary, schema, server, work, 1, files, event)
        print("| files/s, one host (%d single-event files, rsync style) | %.0f files/s |" % (files, one))
        two = files_run(binary, schema, server, work, 2, files, event)
        print("| files/s, two hosts against one database (%d files, half each) | %.0f files/s (%.2f x one host) |"
              % (files, two, two / one))
        for ascending in (True, False):
            path = os.path.join(work, "intake.csv")
            intake_data.write(path, rows, ascending=ascending)
            megabytes = os.path.getsize(path) / 1e6
            floor = floor_run(binary, server, path)
            copy_seconds, seconds, peak = intake_run(binary, schema, server, work, path, rows)
            label = "ascending" if ascending else "scrambled"
            print("| intake, %s rows (%.0f MB), %s keys: psql \\copy into one unindexed table | %.1f s, %.0f rows/s |"
                  % ("{:,}".format(rows), megabytes, label, copy_seconds, rows / copy_seconds))
            print("| same file, carespool into PostgreSQL (validate, normalise, dedupe, history) | %.1f s, %.0f rows/s, "
                  "ratio to \\copy %.2f, peak RSS %.1f MiB |"
                  % (seconds, rows / seconds, copy_seconds / seconds, peak / 1024.0))
            print("| PostgreSQL's floor for this data model: the same rows set-based by SQL from the raw table into "
                  "carespool's tables (no validation, no history) | %.1f s, ratio to \\copy %.2f; carespool / floor %.2f |"
                  % (floor, copy_seconds / floor, floor / seconds))
            copied = staging_run(binary, server, work, path, "copy")
            unnested = staging_run(binary, server, work, path, "unnest")
            print("| staging, %s keys, chunks of 2,000 rows (patients + visits, a transaction each): COPY into a "
                  "temporary table then INSERT ... SELECT / unnest arrays | %.1f s / %.1f s (unnest / COPY %.2f) |"
                  % (label, copied, unnested, unnested / copied))
            os.remove(path)
        print()
        report(server)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
