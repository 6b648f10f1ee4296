#!/usr/bin/env python3
"""carespool torture campaigns: the faults a clinic's server meets, against the real binary.

Usage: torture/torture.py path/to/carespool [--full] [--only NAME[,NAME]] [--fuzz-seconds N]

Campaigns (bounded by default; --full runs the long form):
  crash     kill -9 at random moments during mixed load: HTTP posts, rsync-style and SFTP-style drops of
            all three kinds (one SFTP-style upload in fifteen stalls half-way, still open, for three
            settle intervals), a large intake CSV and, once it is done, two JSON arrays over the stream
            threshold (intake records, appointment events), operator retries. Checked after every kill
            and after the last restart against a model of what was sent (not the daemon's own counters):
            every file in exactly one of done/ or failed/, every 202 stored, every valid record stored
            exactly once; and the big files' ledger rows count every record stored once, none as a
            duplicate of itself.
  diskfull  the spool on a small tmpfs (or the test-only ENOSPC switch where mounting is not allowed):
            HTTP answers 507/503, nothing half-written in an inbox, work waits and resumes when space
            returns, nothing goes to failed/ for lack of space.
  overflow  50,000 files dropped at once (with inotify's queue lowered where permitted): every one found.
  locked    another process holds SQLite's write lock for 5 s: files wait, then succeed; none fail.
  hostile   symlinks to /etc/shadow, hard links, FIFOs, sockets, directories, growing files, files renamed
            away, names with newlines and invalid UTF-8, a 2 GB sparse file: each ends with a reason and
            the daemon keeps running.
  slow      slow senders hold hundreds of connections (half a head, or a body of 10 of its 1,000 bytes)
            while other senders post: every post answered 202 and stored once, every slow body cut off
            with 408 and every slow head closed, none before its timeout, the daemon alive.
  cost      every adversarial shape of bench/shapes.py (many tiny records, many keys, long strings, deep
            nesting, huge CSV fields and rows; 8 MB, 32 MB with --full) dropped and posted while ordinary
            files and webhooks flow beside them: each ordinary file in done/ within 10 s, every 202
            stored, the daemon under its memory budget (256 MiB), nothing crashed.
  multihost three hosts, each its own spool, against one PostgreSQL database started by the campaign:
            the same files dropped to two hosts at once, different files to each (keys overlapping), intake
            files, posts to all three, kill -9 of any host at random moments with restarts, one restart
            of the PostgreSQL server mid-run. Checked against a model of what was sent: every key stored
            once, every 202 stored, every file in one place on its host, none in failed/, each file
            dropped to two hosts stored by one and a duplicate on the other.
  fuzz      the libFuzzer targets (fuzz/build.sh, fuzz/run.sh) for the CSV reader, the JSON Schema
            validator with the appointment parser, and the Zoom normaliser.

Prints a table: campaign, faults injected, files and requests sent, lost (must be 0), stored twice
(must be 0), and the verdict. Exit status 1 when any campaign failed.
"""
import argparse, datetime, http.client, json, os, random, shutil, signal, socket, sqlite3, subprocess, sys
import tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA = os.path.join(ROOT, "schema.json")


def event(appointment_id, minute=0):
    return json.dumps({"event_type": "appointment.scheduled", "appointment_id": appointment_id,
                       "patient_id": "P-" + appointment_id, "timestamp": "2025-01-10T12:%02d:00Z" % minute})


def zoom_event(meeting, ts):
    return json.dumps({"event": "meeting.started", "event_ts": ts,
                       "payload": {"account_id": "acc", "object": {"id": meeting, "uuid": "u%d==" % meeting,
                                                                   "start_time": "2025-01-10T12:00:00Z"}}})


def zoom_presence(meeting, visit, participant, joined, ts):
    """A participant's join (or leave) of one visit, as Zoom posts it."""
    name = "meeting.participant_joined" if joined else "meeting.participant_left"
    key = "join_time" if joined else "leave_time"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1736510400 + ts))
    return json.dumps({"event": name, "event_ts": 1736510400000 + ts * 1000,
                       "payload": {"account_id": "acc", "object": {
                           "id": meeting, "uuid": visit,
                           "participant": {"user_id": participant, "user_name": "Zoë Müller", key: stamp}}}})


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """One run of `carespool serve` on a spool; stopped by SIGTERM or killed."""

    def __init__(self, binary, spool, db=None, http=None, extra=(), config="/dev/null"):
        self.spool = spool
        ready = os.path.join(spool, "processing", "retrying.json")
        if os.path.exists(ready):
            os.unlink(ready)  # written anew by every start: the readiness sign
        args = [binary, "serve", "--config", config, "--spool", spool, "--schema", SCHEMA,
                "--settle-ms", "200", "--rescan-ms", "1000", "--log-level", "warning",
                "--http", "127.0.0.1:%d" % http if http else "off"]
        if db:
            args += ["--db", db]
        # Routes without credentials are closed; these campaigns post unsigned on loopback: opened.
        if http and not any(flag in extra for flag in ("--http-token", "--zoom-secret", "--webhook-secret")):
            args += ["--http-open", "*"]
        self.log = open(os.path.join(os.path.dirname(spool), "daemon.log"), "a")
        self.process = subprocess.Popen(args + list(extra), stderr=self.log)
        deadline = time.monotonic() + 30
        while not os.path.exists(ready):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("daemon did not start; see %s" % self.log.name)
            time.sleep(0.01)

    def wait_listening(self, port):
        # The pipeline is ready before the HTTP socket is bound: a request sent in between is refused.
        # (The crash campaign does not wait: its kills may land in that window too.)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("daemon never listened on %d; see %s" % (port, self.log.name))
                time.sleep(0.01)

    def alive(self):
        return self.process.poll() is None

    def kill(self):
        self.process.kill()
        self.process.wait()

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=120)


def names(folder):
    try:
        return [n for n in os.listdir(folder) if not n.startswith(".")]
    except FileNotFoundError:
        return []


def finished(spool, kind):
    """Original names of the files in done/<kind>/*/ and failed/<kind>/ (sidecars excluded)."""
    out = []
    done = os.path.join(spool, "done", kind)
    for day in names(done):
        out += [n.split("--", 1)[1] for n in names(os.path.join(done, day))]
    out += [n.split("--", 1)[1] for n in names(os.path.join(spool, "failed", kind))
            if not n.endswith(".error.json") and ".rejected." not in n]
    return out


def places(spool, kind):
    """How many times each original name stands in inbox/, processing/, done/ or failed/ of a kind."""
    count = {}
    inbox = names(os.path.join(spool, "inbox", kind))
    processing = [n.split("--", 1)[1] for n in names(os.path.join(spool, "processing", kind)) if "--" in n]
    for name in inbox + processing + finished(spool, kind):
        count[name] = count.get(name, 0) + 1
    return count


def settled(spool, kinds=("appointments", "zoom", "intake"), timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = sum(len(names(os.path.join(spool, f, k))) for f in ("inbox", "processing") for k in kinds)
        if busy == 0:
            return True
        time.sleep(0.1)
    return False


def post(port, body, path="/webhook/appointments"):
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        data = response.read()
        connection.close()
        return response.status, data
    except OSError:
        return None, b""


def rsync_drop(inbox, name, text):
    temporary = os.path.join(inbox, "." + name + ".Xq9")
    with open(temporary, "w") as f:
        f.write(text)
    os.rename(temporary, os.path.join(inbox, name))


def sftp_drop(inbox, name, text, pause=0.002):
    # Written in place in two parts with a pause, as sftp-server does; complete on close.
    with open(os.path.join(inbox, name), "w") as f:
        half = len(text) // 2
        f.write(text[:half])
        f.flush()
        time.sleep(pause)
        f.write(text[half:])


class Result:
    def __init__(self, name):
        self.name, self.faults, self.sent, self.lost, self.twice, self.notes, self.ok = name, 0, 0, 0, 0, [], True

    def fail(self, note):
        self.ok = False
        self.notes.append(note)


def model_violation(spool, events_sent, zoom_sent, intake_rows):
    """What the database holds that the model of what was sent says it must not, or None."""
    path = os.path.join(spool, "carespool.sqlite3")
    if not os.path.exists(path):
        return None
    db = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    try:
        rows = dict(db.execute("SELECT appointment_id, count(*) FROM appointment_events GROUP BY appointment_id"))
        twice = [key for key, n in rows.items() if n > 1]
        unknown = [key for key in rows if key not in events_sent]
        visits, distinct = db.execute("SELECT count(*), count(DISTINCT visit_account_number) FROM visits").fetchone()
        zoom = db.execute("SELECT count(*) FROM zoom_events").fetchone()[0]
    except sqlite3.OperationalError:
        return None  # the first start has not created the tables yet
    finally:
        db.close()
    if twice:
        return "appointment %s stored twice" % twice[0]
    if unknown:
        return "appointment %s stored but never sent" % unknown[0]
    if visits != distinct or visits > intake_rows:
        return "visits %d, distinct %d, sent %d" % (visits, distinct, intake_rows)
    if zoom > zoom_sent:
        return "zoom events %d, sent %d" % (zoom, zoom_sent)
    return None


def campaign_crash(binary, work, full):
    r = Result("crash")
    kills = 1000 if full else 200
    intake_rows = 1_000_000 if full else 200_000
    spool = os.path.join(work, "spool")
    staging = os.path.join(work, "staging")
    os.makedirs(staging)
    port = free_port()
    expected_events = set()   # appointment ids that must be stored (valid, sent by drop or 202)
    accepted_posts = {}       # appointment id -> spool id of each 202
    posted = set()            # appointment ids of every POST sent, answered or not
    dropped = {"appointments": [], "zoom": [], "intake": []}
    zoom_sent = 0
    # The large intake file goes in first, so that kills land in the middle of it.
    lines = ["mrn,first_name,last_name,birth_date,visit_account_number,visit_date,reason"]
    for n in range(intake_rows):
        mrn = n - 7 if (n % 10 < 3 and n >= 10) else n
        lines.append("MRN%d,First%d,Last%d,1980-01-%02d,VAN%d,2025-03-01,follow-up" % (mrn, n % 97, n % 89, 1 + n % 28, n))
    big = "\n".join(lines) + "\n"
    # Two JSON arrays over the stream threshold (8 MiB), streamed element by element: intake records and
    # appointment events. A replay after a kill must find its own records by element number.
    array_rows = 200_000 if full else 60_000
    intake_array = "[\n" + ",\n".join(json.dumps(
        {"mrn": "JMRN%d" % (n - 3 if n % 4 == 0 and n >= 4 else n), "first_name": "First%d" % (n % 13),
         "last_name": "Last%d" % (n % 11), "birth_date": "1981-02-%02d" % (1 + n % 28),
         "visit_account_number": "JVAN%d" % n, "visit_date": "2025-04-01", "reason": "check-up"})
        for n in range(array_rows)) + "\n]\n"
    array_events = ["J%d" % n for n in range(array_rows + array_rows // 6)]
    events_array = "[" + ",".join(event(i) for i in array_events) + "]"
    expected_events.update(array_events)
    # kind: (name, records, text)
    streamed = {"intake": ("big-array.json", array_rows, intake_array),
                "appointments": ("big-events.json", len(array_events), events_array)}
    visits_sent = intake_rows + array_rows
    counter = [0]
    mid_work = [0, 0, 0]  # kills with claimed files in processing/; with the big CSV; with a big JSON array
    big_done = [None]  # the kill after which the big CSV had finished
    arrays_dropped = [None]  # the run in which the JSON arrays were dropped

    def load(stop, inboxes):
        # One load thread per run: drops of every kind, posts, a few invalid files, an occasional retry.
        nonlocal zoom_sent
        while not stop.is_set():
            counter[0] += 1
            n = counter[0]
            choice = n % 6
            try:
                if choice == 0:
                    key = "H%d" % n
                    posted.add(key)  # sent, answered or not: it may be stored either way
                    status, data = post(port, event(key))
                    r.sent += 1
                    if status == 202:
                        accepted_posts[key] = json.loads(data)["id"]
                elif choice in (1, 2):
                    name = "a%d.ndjson" % n
                    ids = ["D%d-%d" % (n, k) for k in range(3)]
                    text = "\n".join(event(i) for i in ids) + "\n"
                    if choice == 1:
                        rsync_drop(inboxes["appointments"], name, text)
                    else:
                        # One upload in fifteen stalls half-way for three settle intervals, still open: it
                        # must not be claimed half-written.
                        sftp_drop(inboxes["appointments"], name, text, pause=0.6 if n % 90 == 2 else 0.002)
                    dropped["appointments"].append(name)
                    expected_events.update(ids)
                    r.sent += 1
                elif choice == 3:
                    name = "z%d.json" % n
                    rsync_drop(inboxes["zoom"], name, zoom_event(90000000000 + n, 1700000000000 + n))
                    dropped["zoom"].append(name)
                    zoom_sent += 1
                    r.sent += 1
                elif choice == 4:
                    name = "bad%d.json" % n
                    rsync_drop(inboxes["appointments"], name, "{not json")
                    dropped["appointments"].append(name)
                    r.sent += 1
                else:
                    subprocess.run([binary, "retry", "--config", "/dev/null", "--spool", spool, "--kind",
                                    "appointments", "--all"], capture_output=True)
            except OSError:
                pass
            time.sleep(0.004)

    inboxes = {k: os.path.join(spool, "inbox", k) for k in ("appointments", "zoom", "intake")}
    for k in range(kills):
        daemon = Daemon(binary, spool, http=port)
        if k == 0:
            with open(os.path.join(staging, "big.csv"), "w") as f:
                f.write(big)
            os.rename(os.path.join(staging, "big.csv"), os.path.join(inboxes["intake"], "big.csv"))
            dropped["intake"].append("big.csv")
        if not arrays_dropped[0] and (big_done[0] is not None or k == kills // 2):
            # Once the CSV is done (at the latest half-way), so that the short runs' kills land while the
            # arrays stream.
            for kind, (name, _, text) in streamed.items():
                rsync_drop(inboxes[kind], name, text)
                dropped[kind].append(name)
            arrays_dropped[0] = k + 1
        stop = threading.Event()
        thread = threading.Thread(target=load, args=(stop, inboxes))
        thread.start()
        # Mostly short runs; every 25th a longer one, so that the big CSV gets further between kills.
        time.sleep(random.uniform(1.0, 4.0) if k % 25 == 24 else random.uniform(0.02, 0.5))
        busy = names(os.path.join(spool, "processing", "intake")) + \
            names(os.path.join(spool, "processing", "appointments")) + names(os.path.join(spool, "processing", "zoom"))
        daemon.kill()
        r.faults += 1
        stop.set()
        thread.join()
        # Kills that landed mid-work: claimed files were left in processing/ (the big CSV among them).
        if busy:
            mid_work[0] += 1
        if any(n.endswith("--big.csv") for n in busy):
            mid_work[1] += 1
        if any(n.endswith(("--big-array.json", "--big-events.json")) for n in busy):
            mid_work[2] += 1
        # After every kill, before the restart. I1 and I2: every file sent, and every request answered
        # 202, is in exactly one place (inbox, processing, done or failed).
        for kind, sent in dropped.items():
            where = places(spool, kind)
            if kind == "appointments":
                sent = sent + [spool_id + ".json" for spool_id in accepted_posts.values()]
            for name in sent:
                if where.get(name, 0) != 1:
                    r.ok = False
                    if len(r.notes) < 20:
                        r.notes.append("after kill %d: %s/%s is in %d places" % (k + 1, kind, name, where.get(name, 0)))
        # I3: no natural key twice, and nothing stored that was not sent (against the model).
        problem = model_violation(spool, expected_events | posted, zoom_sent, visits_sent)
        if problem:
            r.ok = False
            if len(r.notes) < 20:
                r.notes.append("after kill %d: %s" % (k + 1, problem))
        if big_done[0] is None and not os.path.exists(os.path.join(inboxes["intake"], "big.csv")) and \
                not any(n.endswith("--big.csv") for n in names(os.path.join(spool, "processing", "intake"))):
            big_done[0] = k + 1
    # The last run: no kill; everything must finish.
    daemon = Daemon(binary, spool, http=port)
    # Failed files were retried by the load; the bad ones fail again, which is right.
    if not settled(spool):
        r.fail("the spool did not settle after the last restart")
    daemon.stop()
    db = sqlite3.connect("file:%s?mode=ro" % os.path.join(spool, "carespool.sqlite3"), uri=True)
    # I1: every dropped file in exactly one place (failed/ may hold a bad file again after a retry: one).
    for kind, sent in dropped.items():
        final = finished(spool, kind)
        for name in sent:
            count = final.count(name)
            if count == 0:
                r.lost += 1
                r.notes.append("lost file %s/%s" % (kind, name))
            elif count > 1:
                r.fail("%s/%s is in %d places" % (kind, name, count))
    # I2 and I3: every 202 and every valid dropped record stored exactly once.
    rows = dict(db.execute("SELECT appointment_id, count(*) FROM appointment_events GROUP BY appointment_id"))
    for key in list(expected_events) + list(accepted_posts):
        if rows.get(key, 0) == 0:
            r.lost += 1
    r.twice += sum(n - 1 for n in rows.values() if n > 1)
    ledger = set(n for (n,) in db.execute("SELECT original_name FROM files"))
    for key, spool_id in accepted_posts.items():
        if spool_id + ".json" not in ledger:
            r.fail("202 %s has no ledger row" % spool_id)
    zoom_rows = db.execute("SELECT count(*) FROM zoom_events").fetchone()[0]
    if zoom_rows != zoom_sent:
        r.lost += max(0, zoom_sent - zoom_rows)
        r.twice += max(0, zoom_rows - zoom_sent)
    visits = db.execute("SELECT count(*), count(DISTINCT visit_account_number) FROM visits").fetchone()
    if visits[0] != visits_sent:
        r.lost += max(0, visits_sent - visits[0])
        r.twice += max(0, visits[0] - visits_sent)
    r.sent += intake_rows + array_rows + len(array_events)
    # The big files' ledger rows count every record stored once: a replay after a kill finds the records
    # its earlier runs committed and counts them as stored, not as duplicates.
    for name, rows in [("big.csv", intake_rows)] + [(name, rows) for name, rows, _ in streamed.values()]:
        row = db.execute("SELECT outcome, stored, duplicates FROM files WHERE original_name = ?", (name,)).fetchall()
        if row != [("accepted", rows, 0)]:
            r.fail("ledger of %s: %s, expected one row accepted, %d stored, 0 duplicates" % (name, row, rows))
    r.notes.append("%d posts got 202, %d files dropped, %d-row intake CSV, streamed JSON arrays of %d intake "
                   "records and %d events; %d kills left claimed files in processing/, %d of them mid-way "
                   "through the CSV (%s), %d with a JSON array (dropped in run %s)" %
                   (len(accepted_posts), sum(len(v) for v in dropped.values()), intake_rows, array_rows,
                    len(array_events), mid_work[0],
                    mid_work[1], "finished before kill %d" % big_done[0] if big_done[0] else
                    "finished after the last restart", mid_work[2], arrays_dropped[0]))
    if r.lost or r.twice:
        r.ok = False
    return r


def campaign_overflow(binary, work, full):
    r = Result("overflow")
    spool = os.path.join(work, "spool")
    count = 50_000
    queue_file = "/proc/sys/fs/inotify/max_queued_events"
    original = None
    try:
        original = open(queue_file).read().strip()
        open(queue_file, "w").write("256")
        r.notes.append("inotify queue lowered to 256 events")
    except OSError:
        r.notes.append("inotify queue left at its size (not permitted to lower it)")
    try:
        daemon = Daemon(binary, spool)
        inbox = os.path.join(spool, "inbox", "appointments")
        staging = os.path.join(spool, "inbox", "appointments")
        for n in range(count):
            temporary = os.path.join(staging, ".o%d.tmp" % n)
            with open(temporary, "w") as f:
                f.write(event("O%d" % n))
        for n in range(count):
            os.rename(os.path.join(staging, ".o%d.tmp" % n), os.path.join(inbox, "o%d.json" % n))
        r.sent = count
        r.faults = 1
        if not settled(spool, timeout=600):
            r.fail("not every file was processed")
        alive = daemon.alive()
        daemon.stop()
        if not alive:
            r.fail("the daemon died")
        done = len(finished(spool, "appointments"))
        r.lost = count - done
        db = sqlite3.connect(os.path.join(spool, "carespool.sqlite3"))
        stored = db.execute("SELECT count(DISTINCT appointment_id), count(*) FROM appointment_events").fetchone()
        r.lost = max(r.lost, count - stored[0])
        r.twice = stored[1] - stored[0]
        if r.lost or r.twice:
            r.ok = False
    finally:
        if original is not None:
            open(queue_file, "w").write(original)
    return r


def campaign_locked(binary, work, full):
    r = Result("locked")
    spool = os.path.join(work, "spool")
    daemon = Daemon(binary, spool, extra=["--busy-timeout-ms", "500"])
    inbox = os.path.join(spool, "inbox", "appointments")
    rsync_drop(inbox, "warm.json", event("L-warm"))
    settled(spool)
    lock = sqlite3.connect(os.path.join(spool, "carespool.sqlite3"), timeout=10, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    r.faults = 1
    for n in range(200):
        rsync_drop(inbox, "l%d.json" % n, event("L%d" % n))
    r.sent = 201
    time.sleep(5)
    waiting = len(names(os.path.join(spool, "processing", "appointments")))
    failed_during = len(finished(spool, "appointments")) - 1
    lock.execute("ROLLBACK")
    lock.close()
    if not settled(spool):
        r.fail("files did not finish after the lock was released")
    daemon.stop()
    if failed_during:
        r.fail("%d files finished while the database was locked" % failed_during)
    if names(os.path.join(spool, "failed", "appointments")):
        r.fail("files went to failed/")
    db = sqlite3.connect(os.path.join(spool, "carespool.sqlite3"))
    stored = db.execute("SELECT count(*) FROM appointment_events").fetchone()[0]
    r.lost = 201 - stored
    r.notes.append("%d files waited in processing/ under the lock" % waiting)
    if r.lost:
        r.ok = False
    return r


def campaign_hostile(binary, work, full):
    r = Result("hostile")
    spool = os.path.join(work, "spool")
    daemon = Daemon(binary, spool)
    inbox = os.path.join(spool, "inbox", "appointments")
    outside = os.path.join(work, "outside.json")
    with open(outside, "w") as f:
        f.write(event("HL1"))
    cases = {}
    os.symlink("/etc/shadow", os.path.join(inbox, "shadow.json")); cases["shadow.json"] = "failed"
    # A second hard link: its sender could change it through the other name after the claim: refused unread.
    os.link(outside, os.path.join(inbox, "hardlink.json")); cases["hardlink.json"] = "failed"
    os.mkfifo(os.path.join(inbox, "fifo.json")); cases["fifo.json"] = "failed"
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(os.path.join(inbox, "socket.json")); cases["socket.json"] = "failed"
    os.mkdir(os.path.join(inbox, "directory.json")); cases["directory.json"] = "failed"
    newline = "new\nline.json"
    rsync_drop(inbox, newline, event("HN1")); cases[newline] = "done"
    bad_utf8 = b"bad\xff\xfename.json"
    with open(os.path.join(inbox.encode(), b"." + bad_utf8 + b".tmp"), "w") as f:
        f.write(event("HU1"))
    os.rename(os.path.join(inbox.encode(), b"." + bad_utf8 + b".tmp"), os.path.join(inbox.encode(), bad_utf8))
    cases["bad%FF%FEname.json"] = "done"  # renamed to its percent-escaped form, then processed
    # Names a hostile partner picks (docs/SECURITY.md): canonically equivalent twins, 90 bytes that are
    # not UTF-8, a name too long for <id>--<name> and its sidecars, control characters. Each must be
    # claimed once and keep its whole name (its text form) in the ledger.
    ledger_names = {}
    for raw, text, key in ((b"caf\xc3\xa9.json", "caf\u00e9.json", "HX1"), (b"cafe\xcc\x81.json", "cafe\u0301.json", "HX2"),
                           (b"\xfe" * 90, "%FE" * 90, "HX3"),
                           (("\u00e9" * 120 + "-visits.json").encode(), "\u00e9" * 120 + "-visits.json", "HX4"),
                           (b"esc\x1b]0;owned\x07\r.json", "esc\x1b]0;owned\x07\r.json", "HX5")):
        temporary = os.path.join(inbox.encode(), b".hostile.tmp")
        with open(temporary, "w") as f:
            f.write(event(key))
        os.rename(temporary, os.path.join(inbox.encode(), raw))
        ledger_names[text] = key
    # Links planted where the daemon once wrote fixed names, aimed at a file outside the spool.
    canary = os.path.join(work, "canary")
    with open(canary, "w") as f:
        f.write("precious")
    canary_mtime = os.stat(canary).st_mtime_ns
    for name in ("tmp/.retrying.json", "tmp/.drop-a.json", "tmp/.w", "processing/retrying.json", "processing/.crashed"):
        try:
            os.symlink(canary, os.path.join(spool, name))
        except FileExistsError:
            os.unlink(os.path.join(spool, name))
            os.symlink(canary, os.path.join(spool, name))
    sparse = os.path.join(inbox, "sparse.json")
    with open(sparse, "wb") as f:
        f.truncate(2 * 1024 * 1024 * 1024)
    cases["sparse.json"] = "failed"
    # A file that keeps growing after it was closed, and one renamed away at once.
    grow = os.path.join(inbox, "growing.ndjson")
    with open(grow, "w") as f:
        f.write(event("HG0") + "\n")
    for n in range(1, 5):
        time.sleep(0.05)
        with open(grow, "a") as f:
            f.write(event("HG%d" % n) + "\n")
    cases["growing.ndjson"] = "any"
    rsync_drop(inbox, "vanishing.json", event("HV1"))
    try:
        os.rename(os.path.join(inbox, "vanishing.json"), os.path.join(work, "vanished.json"))
    except FileNotFoundError:
        pass  # the daemon claimed it first: then it is processed like any other
    r.faults = len(cases) + 3 + len(ledger_names) + 5
    r.sent = r.faults
    if not settled(spool, timeout=120):
        r.fail("the spool did not settle")
    alive = daemon.alive()
    rss = 0
    try:
        rss = int(next(l.split()[1] for l in open("/proc/%d/status" % daemon.process.pid) if l.startswith("VmHWM:")))
    except (OSError, StopIteration):
        pass
    daemon.stop()
    unix.close()
    if not alive:
        r.fail("the daemon died")
    places = finished(spool, "appointments")
    failed = [n.split("--", 1)[1] for n in names(os.path.join(spool, "failed", "appointments"))
              if n.endswith(".error.json")]
    for name, where in cases.items():
        if name not in places:
            r.fail("%r did not finish" % name)
        elif where == "failed" and name + ".error.json" not in failed:
            r.fail("%r did not end in failed/ with a reason" % name)
    db = sqlite3.connect(os.path.join(spool, "carespool.sqlite3"))
    # The symlink's target is never read: nothing of /etc/shadow is in the database or the spool.
    secret = open("/etc/shadow", "rb").read()[:24] if os.access("/etc/shadow", os.R_OK) else None
    if secret:
        for folder, _, files in os.walk(spool):
            for f in files:
                path = os.path.join(folder, f)
                if not os.path.islink(path) and os.path.isfile(path) and os.path.getsize(path) < 64 << 20:
                    if secret in open(path, "rb").read():
                        r.fail("/etc/shadow was read (found in %s)" % path)
    stored = set(n for (n,) in db.execute("SELECT appointment_id FROM appointment_events"))
    originals = [n for (n,) in db.execute("SELECT original_name FROM files")]
    for text, key in ledger_names.items():
        if originals.count(text) != 1:
            r.fail("%r is %d times in the ledger (its whole name, once, expected)" % (text, originals.count(text)))
    if open(canary).read() != "precious" or os.stat(canary).st_mtime_ns != canary_mtime:
        r.fail("a planted symlink was followed: the file outside the spool changed")
    if "HL1" in stored:
        r.fail("a file with another hard link was read")
    for key in ["HN1", "HU1"] + list(ledger_names.values()):
        if key not in stored:
            r.lost += 1
            r.notes.append("%s not stored" % key)
    r.notes.append("peak RSS %.0f MiB (2 GB sparse file included)" % (rss / 1024.0))
    if r.lost:
        r.ok = False
    return r


def campaign_slow(binary, work, full):
    """Slowloris: connections that send half a request head, or a head and 10 bytes of a 1,000-byte body,
    then nothing; each must be cut off, not before its timeout — a slow head closed after the header
    timeout (4 s here), a slow body answered 408 after the body timeout (2 s; a body stalled for the
    header timeout, when that is the shorter, is closed like an idle connection) — while posts from
    other senders go on being answered 202 and stored."""
    r = Result("slow")
    spool = os.path.join(work, "spool")
    port = free_port()
    daemon = Daemon(binary, spool, http=port, extra=("--http-header-timeout", "4", "--http-body-timeout", "2"))
    daemon.wait_listening(port)
    count = 600 if full else 300
    slow = []
    for n in range(count):
        # Before the connection exists: the daemon's timers cannot start earlier.
        opened = time.monotonic()
        connection = socket.create_connection(("127.0.0.1", port), timeout=30)
        if n % 2 == 0:
            connection.sendall(b"POST /webhook/appointments HTTP/1.1\r\nHost: x\r\nContent-Ty")
        else:
            connection.sendall(b"POST /webhook/appointments HTTP/1.1\r\nHost: x\r\n"
                               b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n" + b"[" * 10)
        slow.append((n % 2 == 1, connection, opened))
    r.faults = count
    statuses = []

    def sender(prefix):
        for n in range(100 if full else 50):
            statuses.append((prefix + str(n), post(port, event(prefix + str(n)))[0]))

    senders = [threading.Thread(target=sender, args=("SL%d-" % t,)) for t in range(4)]
    for thread in senders:
        thread.start()
    cut = {"408": 0, "closed": 0}
    wrong = {}  # what went wrong with slow senders: one note per kind, with a count and the first case
    for is_body, connection, opened in slow:
        reply = b""
        try:
            while True:
                chunk = connection.recv(4096)
                if not chunk:
                    break
                reply += chunk
        except OSError as error:
            wrong.setdefault("not closed within 30 s (%s)" % type(error).__name__, []).append(error)
            connection.close()
            continue
        waited = time.monotonic() - opened
        connection.close()
        if is_body and not reply.startswith(b"HTTP/1.1 408"):
            wrong.setdefault("slow body not answered 408", []).append(reply[:40])
        elif not is_body and reply:
            wrong.setdefault("slow head answered instead of closed", []).append(reply[:40])
        elif waited < (2 if is_body else 4):
            wrong.setdefault("cut off before its timeout", []).append("%.1f s" % waited)
        else:
            cut["408" if is_body else "closed"] += 1
    for kind, cases in wrong.items():
        r.fail("%d: %s (first: %r)" % (len(cases), kind, cases[0]))
    for thread in senders:
        thread.join()
    r.sent = count + len(statuses)
    refused = [key for key, status in statuses if status != 202]
    if refused:
        r.fail("%d posts not answered 202 (first %s)" % (len(refused), refused[0]))
    if not settled(spool, kinds=("appointments",), timeout=120):
        r.fail("the spool did not settle")
    if not daemon.alive():
        r.fail("the daemon died")
    daemon.stop()
    db = sqlite3.connect(os.path.join(spool, "carespool.sqlite3"))
    stored = dict(db.execute("SELECT appointment_id, count(*) FROM appointment_events GROUP BY appointment_id"))
    for key, status in statuses:
        if status == 202 and key not in stored:
            r.lost += 1
    r.twice = sum(1 for n in stored.values() if n > 1)
    r.notes.append("%d slow bodies answered 408, %d slow heads closed; %d posts meanwhile" %
                   (cut["408"], cut["closed"], len(statuses)))
    if r.lost or r.twice:
        r.ok = False
    return r


def campaign_diskfull(binary, work, full):
    r = Result("diskfull")
    spool = os.path.join(work, "spool")
    os.makedirs(spool)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", spool], capture_output=True).returncode == 0
    switch = os.path.join(work, "enospc")
    extra = ["--disk-reserve-mib", "0"] + ([] if mounted else ["--test-enospc-while", switch])
    r.notes.append("spool on a 6 MiB tmpfs" if mounted else "mount not permitted: the ENOSPC switch")
    port = free_port()
    try:
        daemon = Daemon(binary, spool, db=os.path.join(work, "db.sqlite3"), http=port, extra=extra)
        daemon.wait_listening(port)
        filler = os.path.join(spool, "filler")
        if mounted:
            stat = os.statvfs(spool)
            with open(filler, "wb") as f:
                f.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - 400_000))
        else:
            open(switch, "w").close()
        r.faults = 1
        accepted, statuses = [], {}
        for n in range(40):
            body = "[" + ",".join(event("F%d-%d" % (n, k)) for k in range(300)) + "]"
            status, data = post(port, body)
            statuses[status] = statuses.get(status, 0) + 1
            if status == 202:
                accepted.append(n)
            r.sent += 1
        partial = [name for name in names(os.path.join(spool, "inbox", "appointments"))
                   if not name.endswith(".json")]
        tmp_left = [n for n in os.listdir(os.path.join(spool, "tmp")) if n.startswith(".http-")]
        if 507 not in statuses and 503 not in statuses:
            r.fail("no 507 or 503 while the disk was full: %s" % statuses)
        if partial or tmp_left:
            r.fail("half-written files: %s %s" % (partial, tmp_left))
        # Space returns: what waited goes on by itself.
        os.unlink(filler if mounted else switch)
        status, _ = post(port, "[" + event("F-after") + "]")
        if status != 202:
            r.fail("not accepted after space returned: %s" % status)
        if not settled(spool):
            r.fail("work did not resume when space returned")
        daemon.stop()
        if names(os.path.join(spool, "failed", "appointments")):
            r.fail("files went to failed/ for lack of space")
        db = sqlite3.connect(os.path.join(work, "db.sqlite3"))
        stored = set(n for (n,) in db.execute("SELECT appointment_id FROM appointment_events"))
        for n in accepted:
            for k in range(300):
                if "F%d-%d" % (n, k) not in stored:
                    r.lost += 1
        r.notes.append("answers while full: %s" % ", ".join("%s×%d" % kv for kv in sorted(statuses.items(), key=str)))
        if r.lost:
            r.ok = False
    finally:
        if mounted:
            subprocess.run(["umount", "-l", spool])
    return r


def peak_rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def gzip_shapes(shapes, size):
    """Compressed drops for the cost campaign: a bomb (1 GiB of one byte in about 1 MB), a small document
    after 60,000 empty members, a stream cut in half, a file compressed twice, and an adversarial CSV
    shape gzipped — each must end in done/ or failed/ without slowing the ordinary files."""
    import gzip, zlib
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"a" * (1 << 20)
    bomb = b"".join(packer.compress(block) for _ in range(1024)) + packer.flush()
    document = json.dumps({"event_type": "appointment.scheduled", "appointment_id": "GZDOC", "patient_id": "P1",
                           "timestamp": "2031-05-06T07:08:09Z"}, indent=2).encode()
    padded = gzip.compress(document, mtime=0) + gzip.compress(b"", mtime=0) * 60000
    csv = next(data for kind, name, suffix, data in shapes.shapes(size) if suffix == "csv" and not name.startswith("plain"))
    packed = gzip.compress(csv, compresslevel=6, mtime=0)
    return [
        ("intake", "gzip-bomb", "csv.gz", bomb),
        ("appointments", "gzip-padded-document", "json.gz", padded),
        ("intake", "gzip-cut", "csv.gz", packed[: len(packed) // 2]),
        ("intake", "gzip-twice", "csv.gz.gz", gzip.compress(packed, mtime=0)),
        ("intake", "gzip-csv-shape", "csv.gz", packed),
    ]


def report_shapes(size):
    """Zoom participants reports for the cost campaign (the inbox's zone is America/Chicago): everyone
    joining in one second (rows matched by exact keys, never each against its second's others), one name
    of 4 MB, a meeting per row of a one-table export, the skipped hour on every row, and Reports API pages
    over the stream threshold (refused unread)."""
    header = "Name (Original Name),User Email,Join Time,Leave Time,Duration (Minutes)\n"
    row = "Ñandú %d, Pérez,,11/20/2026 09:00:00 AM,11/20/2026 10:00:00 AM,60\n"
    crowded = [header]
    total = len(header)
    n = 0
    while total < size:
        line = '"' + (row % n).replace(",,", '",,', 1)
        crowded.append(line)
        total += len(line.encode())
        n += 1
    long_name = header + '"%s",x@example.org,11/20/2026 09:00:00 AM,11/20/2026 10:00:00 AM,60\n' % ("ñ" * (2 << 20))
    flat_header = ("Topic,Meeting ID,User Name,User Email,Department,Group,Has Zoom Rooms,Creation Time,Start Time,"
                   "End Time,Duration (Minutes),Participants,Name (Original Name),User Email,Join Time,Leave Time,"
                   "Duration (Minutes),Guest\n")
    flat = [flat_header]
    total = len(flat_header)
    n = 0
    while total < size:
        line = ("Visita,%d,Dr. Núñez,host@example.org,,,No,,11/20/2026 09:00,11/20/2026 10:00,60,2,Zoë %d,"
                "z%d@example.org,11/20/2026 09:%02d,11/20/2026 09:59,30,No\n" % (80000000000 + n, n, n, n % 60))
        flat.append(line)
        total += len(line.encode())
        n += 1
    skipped = header + "".join("P%d,,03/08/2026 02:%02d:00 AM,03/08/2026 03:30:00 AM,30\n" % (i, i % 60)
                               for i in range(size // 60))
    pages = json.dumps([{"meeting_id": "93812345678", "participants": [
        {"user_id": str(16778240 + i), "name": "Ana %d" % i, "user_email": "",
         "join_time": "2026-11-20T15:00:00Z", "leave_time": "2026-11-20T15:30:00Z", "duration": 1800}
        for i in range(300)]}] * max(1, size // 30000))
    return [
        ("zoom-report", "participants_93800000001-crowded", "csv", "".join(crowded).encode()),
        ("zoom-report", "participants_93800000002-long-name", "csv", long_name.encode()),
        ("zoom-report", "report-meeting-per-row", "csv", "".join(flat).encode()),
        ("zoom-report", "participants_93800000003-skipped-hour", "csv", skipped.encode()),
        ("zoom-report", "participants_93812345678-pages", "json", pages.encode()),
    ]


def campaign_cost(binary, work, full):
    """Every adversarial shape of bench/shapes.py (8 MB; 32 MB with --full), dropped into its inbox and
    posted (appointment shapes to /ingest's 64 MiB door as well as the webhook's 1 MiB one), while an
    ordinary file is dropped and an ordinary webhook posted every 100 ms: each ordinary file reaches
    done/ within 10 s of its drop, every ordinary 202 is stored, every shape ends in done/ or failed/,
    the daemon's peak RSS stays under its memory budget (the default, 256 MiB), nothing crashes."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import shapes
    r = Result("cost")
    budget_mib = 256
    spool = os.path.join(work, "spool")
    port = free_port()
    config = os.path.join(work, "carespool.toml")
    with open(config, "w") as f:
        f.write('[zoom_report]\ntimezone = "America/Chicago"\n')
    daemon = Daemon(binary, spool, http=port, config=config)
    daemon.wait_listening(port)
    size = (32 if full else 8) * 1000 * 1000
    stop = threading.Event()
    dropped = {}  # ordinary name -> time of its drop
    posted = []  # (appointment id, status)

    def ordinary():
        n = 0
        while not stop.is_set():
            name = "ord%d.json" % n
            rsync_drop(os.path.join(spool, "inbox", "appointments"), name, event("ORD-%d" % n))
            dropped[name] = time.time()
            status, _ = post(port, event("ORDP-%d" % n))
            for _ in range(5):
                if status != 503:
                    break
                time.sleep(1)  # the door's Retry-After: bodies held at their budget (a 32 MB post beside)
                status, _ = post(port, event("ORDP-%d" % n))
            posted.append(("ORDP-%d" % n, status))
            n += 1
            time.sleep(0.1)

    arrived = {}

    def arrival(name):
        # When the daemon renamed it into done/ (its ctime, by the kernel's clock): not when this thread,
        # sharing the interpreter with the one posting 8 MB shapes, got round to seeing it.
        done = os.path.join(spool, "done", "appointments")
        for day in names(done):
            for entry in names(os.path.join(done, day)):
                if entry.split("--", 1)[1] == name:
                    return os.stat(os.path.join(done, day, entry)).st_ctime
        return time.time()

    def watch_done():
        # Polls done/ for the ordinary files' arrival (the daemon's own latency, seen from outside).
        while not stop.is_set() or len(arrived) < len(dropped):
            for name in finished(spool, "appointments"):
                if name.startswith("ord") and name not in arrived:
                    arrived[name] = arrival(name)
            if stop.is_set() and time.monotonic() > stop_time[0] + 120:
                return
            time.sleep(0.05)

    stop_time = [float("inf")]
    threads = [threading.Thread(target=ordinary), threading.Thread(target=watch_done)]
    for thread in threads:
        thread.start()
    sent_shapes = []
    answers = {}
    try:
        for kind, name, suffix, data in list(shapes.shapes(size)) + gzip_shapes(shapes, size) + report_shapes(size):
            if name.startswith("plain"):
                continue
            staged = os.path.join(work, "staged")
            with open(staged, "wb") as f:
                f.write(data)
            os.rename(staged, os.path.join(spool, "inbox", kind, "%s.%s" % (name, suffix)))
            sent_shapes.append((kind, "%s.%s" % (name, suffix)))
            paths = [] if kind == "zoom-report" else ["/ingest"] if kind == "intake" else ["/webhook/appointments", "/ingest"]
            for path in paths:
                if kind == "intake" and suffix == "csv":
                    continue  # the door takes JSON only; CSV is a drop
                status, _ = post(port, data, path)
                answers[status] = answers.get(status, 0) + 1
                if status is None or status >= 500 and status != 503:
                    r.fail("%s posted to %s: %s" % (name, path, status))
            r.faults += 1
        time.sleep(2)
    finally:
        stop.set()
        stop_time[0] = time.monotonic()
        for thread in threads:
            thread.join()
    r.sent = len(sent_shapes) + len(dropped) + len(posted)
    if not settled(spool, kinds=("appointments", "intake", "zoom-report"), timeout=300):
        r.fail("the spool did not settle")
    peak = peak_rss_mib(daemon.process.pid)
    if not daemon.alive():
        r.fail("the daemon died")
    daemon.stop()
    if peak > budget_mib:
        r.fail("peak RSS %.0f MiB over the %d MiB budget" % (peak, budget_mib))
    for kind, name in sent_shapes:
        if finished(spool, kind).count(name) != 1:
            r.fail("%s: not in exactly one of done/ or failed/" % name)
    late = sorted(((arrived.get(n, float("inf")) - t), n) for n, t in dropped.items())
    worst = late[-1][0] if late else 0
    if worst > 10:
        r.fail("an ordinary file waited %.1f s (%s) behind the shapes" % (worst, late[-1][1]))
    db = sqlite3.connect(os.path.join(spool, "carespool.sqlite3"))
    stored = set(n for (n,) in db.execute("SELECT appointment_id FROM appointment_events WHERE appointment_id LIKE 'ORD%'"))
    for key, status in posted:
        if status == 202 and key not in stored:
            r.lost += 1
        if status != 202:
            r.fail("an ordinary post answered %s" % status)
    for name in dropped:
        if "ORD-" + name[3:-5] not in stored:
            r.lost += 1
    r.twice = sum(n for (n,) in db.execute(
        "SELECT count(*) - count(DISTINCT appointment_id) FROM appointment_events WHERE appointment_id LIKE 'ORD%'"))
    lat = sorted(a - dropped[n] for n, a in arrived.items() if n in dropped)
    r.notes.append("%d shapes of %d MB dropped and posted (answers %s); peak RSS %.0f MiB (budget %d); "
                   "%d ordinary drops, drop->done p50 %.2f s, max %.2f s" % (
                       len(sent_shapes), size // 1000000,
                       ", ".join("%s×%d" % kv for kv in sorted(answers.items(), key=str)), peak, budget_mib,
                       len(dropped), lat[len(lat) // 2] if lat else -1, worst))
    if r.lost or r.twice:
        r.ok = False
    return r


def campaign_multihost(binary, work, full):
    """Three hosts, each with its own spool, against one PostgreSQL database (a server of the campaign's
    own): the same files dropped to two hosts at once, different files to each, posts to all three, kill -9
    of any host at random moments with restarts, one restart of the PostgreSQL server mid-run. Checked
    against a model of what was sent."""
    r = Result("multihost")
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import postgres
    seconds = 240 if full else 60
    server = postgres.Server()
    try:
        url, password_file = server.fresh_database()
        hosts = 3
        spools = [os.path.join(work, "h%d" % n, "spool") for n in range(hosts)]
        ports = [free_port() for _ in range(hosts)]
        for spool in spools:
            os.makedirs(spool)

        def start(n):
            daemon = Daemon(binary, spools[n], http=ports[n],
                            extra=["--db", url, "--db-password-file", password_file, "--host-name", "h%d" % n])
            return daemon

        daemons = [start(n) for n in range(hosts)]
        for n, daemon in enumerate(daemons):
            daemon.wait_listening(ports[n])
        inbox = lambda n, kind: os.path.join(spools[n], "inbox", kind)
        must = set()        # appointment ids that must be stored: dropped, or answered 202
        maybe = set()       # posted without an answer (the host was killed): stored or not
        visits = set()      # visit numbers dropped
        dropped = [[] for _ in range(hosts)]  # (kind, name) per host
        shared = []         # names dropped to two hosts
        zoom_visits = {}    # visit uuid -> participants whose join and leave were both sent
        zoom_must = set()   # (participant, join or leave) of the events that must be stored
        zoom_maybe = set()  # posted without an answer
        counter = [0]
        stop = threading.Event()
        lock = threading.Lock()

        def load():
            rng = random.Random(7)
            while not stop.is_set():
                counter[0] += 1
                n = counter[0]
                choice = n % 6
                try:
                    if choice == 0:
                        host = rng.randrange(hosts)
                        key = "HP%d" % n
                        status, _ = post(ports[host], event(key))
                        with lock:
                            (must if status == 202 else maybe).add(key)
                        r.sent += 1
                    elif choice == 1:
                        # The same bytes to two hosts at once.
                        a, b = rng.sample(range(hosts), 2)
                        ids = ["S%d-%d" % (n, k) for k in range(4)]
                        text = "\n".join(event(i) for i in ids) + "\n"
                        name = "same%d.ndjson" % n
                        rsync_drop(inbox(a, "appointments"), name, text)
                        rsync_drop(inbox(b, "appointments"), name, text)
                        with lock:
                            must.update(ids)
                            dropped[a].append(("appointments", name))
                            dropped[b].append(("appointments", name))
                            shared.append(name)
                        r.sent += 2
                    elif choice in (2, 3):
                        # A host's own file whose keys overlap the file before it (another host's).
                        host = n % hosts
                        ids = ["O%d" % k for k in range(n - 3, n + 3)]
                        text = "\n".join(event(i) for i in rng.sample(ids, len(ids))) + "\n"
                        name = "own%d.ndjson" % n
                        rsync_drop(inbox(host, "appointments"), name, text)
                        with lock:
                            must.update(ids)
                            dropped[host].append(("appointments", name))
                        r.sent += 1
                    elif choice == 5:
                        # One visit's events spread over the hosts: a participant's join posted to one host,
                        # the leave dropped to another, and the visit's start dropped to two hosts at once.
                        visit = "ZV%d==" % (n // 120)
                        who = "zp%d" % n
                        a, b = rng.sample(range(hosts), 2)
                        status, _ = post(ports[a], zoom_presence(777, visit, who, True, n), "/zoom_events/events")
                        rsync_drop(inbox(b, "zoom"), "leave%d.json" % n, zoom_presence(777, visit, who, False, n + 30))
                        text = zoom_presence(777, visit, "host-" + visit, True, n // 120 * 120) + "\n"
                        name = "zstart%d.json" % n
                        rsync_drop(inbox(a, "zoom"), name, text)
                        rsync_drop(inbox(b, "zoom"), name, text)
                        with lock:
                            (zoom_must if status == 200 else zoom_maybe).add((who, "join"))
                            zoom_must.add((who, "leave"))
                            zoom_must.add(("host-" + visit, "join"))
                            if status == 200:
                                zoom_visits.setdefault(visit, set()).add(who)
                            dropped[b].append(("zoom", "leave%d.json" % n))
                            dropped[a].append(("zoom", name))
                            dropped[b].append(("zoom", name))
                        r.sent += 4
                    else:
                        # Intake: a host's own file, visits overlapping the one before, patients repeating.
                        host = rng.randrange(hosts)
                        rows = ["mrn,first_name,last_name,birth_date,visit_account_number,visit_date,reason"]
                        for k in range(n - 20, n + 20):
                            rows.append("MH%d,Zoë,Müller,1970-01-%02d,VH%d,2025-05-01,suivi" % (k % 50, 1 + k % 28, k))
                            with lock:
                                visits.add("VH%d" % k)
                        name = "intake%d.csv" % n
                        rsync_drop(inbox(host, "intake"), name, "\n".join(rows) + "\n")
                        with lock:
                            dropped[host].append(("intake", name))
                        r.sent += 1
                except OSError:
                    pass
                time.sleep(0.01)

        thread = threading.Thread(target=load, daemon=True)
        thread.start()
        rng = random.Random(11)
        began = time.monotonic()
        restarted_server = False
        while time.monotonic() - began < seconds:
            time.sleep(rng.uniform(1.0, 3.0))
            if not restarted_server and time.monotonic() - began > seconds / 2:
                # The database restarts as after a crash: every host's connections drop.
                server.run([server.bin + "/pg_ctl", "-D", server.folder + "/data", "-m", "immediate", "-w", "stop"])
                time.sleep(2)
                server.run([server.bin + "/pg_ctl", "-D", server.folder + "/data", "-l",
                            server.folder + "/server.log", "-w", "start"])
                restarted_server = True
                r.faults += 1
                continue
            victim = rng.randrange(hosts)
            daemons[victim].kill()
            r.faults += 1
            time.sleep(rng.uniform(0.05, 0.5))
            daemons[victim] = start(victim)
        stop.set()
        thread.join()
        for n in range(hosts):
            if not settled(spools[n], kinds=("appointments", "intake", "zoom"), timeout=300):
                r.fail("host h%d did not settle" % n)
        for daemon in daemons:
            if daemon.stop() != 0:
                r.fail("a host did not stop cleanly after SIGTERM")
        # Every file in exactly one place on its host, none in failed/ (all were valid).
        for n in range(hosts):
            for kind in ("appointments", "intake", "zoom"):
                counts = places(spools[n], kind)
                for k, name in dropped[n]:
                    if k == kind and counts.get(name, 0) != 1:
                        r.fail("h%d: %s in %d places" % (n, name, counts.get(name, 0)))
                failed = [x for x in names(os.path.join(spools[n], "failed", kind))]
                if failed:
                    r.fail("h%d: %d entries in failed/%s, e.g. %s" % (n, len(failed), kind, failed[0]))
        q = lambda sql: server.psql(sql, "site")
        stored = set(q("SELECT appointment_id FROM appointment_events").split())
        twice = int(q("SELECT count(*) - count(DISTINCT (appointment_id, instant)) FROM appointment_events"))
        stored_visits = set(q("SELECT visit_account_number FROM visits").split())
        twice += int(q("SELECT count(*) - count(DISTINCT visit_account_number) FROM visits"))
        r.twice = twice
        r.lost = len(must - stored) + len(visits - stored_visits)
        unknown = stored - must - maybe
        if r.lost:
            r.fail("%d keys sent and not stored, e.g. %s" % (r.lost, sorted((must - stored) | (visits - stored_visits))[:3]))
        if unknown or stored_visits - visits:
            r.fail("keys stored that were never sent: %s" % sorted(unknown | (stored_visits - visits))[:3])
        if twice:
            r.fail("%d keys stored twice" % twice)
        # Zoom: every event once; each visit's timeline has every participant whose join and leave were
        # both accepted, joined and left, whichever hosts stored them and in whatever order.
        zoom_stored = set(tuple(line.split("|")) for line in q(
            "SELECT participant_id || '|' || CASE WHEN event_name LIKE '%joined' THEN 'join' ELSE 'leave' END "
            "FROM zoom_events").split())
        zoom_twice = int(q("SELECT count(*) - count(DISTINCT (visit_uuid, event_name, event_ts, participant_id)) "
                           "FROM zoom_events"))
        zoom_lost = zoom_must - zoom_stored
        r.lost += len(zoom_lost)
        r.twice += zoom_twice
        if zoom_lost:
            r.fail("%d Zoom events sent and not stored, e.g. %s" % (len(zoom_lost), sorted(zoom_lost)[:3]))
        if zoom_stored - zoom_must - zoom_maybe:
            r.fail("Zoom events stored that were never sent: %s" % sorted(zoom_stored - zoom_must - zoom_maybe)[:3])
        if zoom_twice:
            r.fail("%d Zoom events stored twice" % zoom_twice)
        for visit, people in sorted(zoom_visits.items()):
            whole = set(q("SELECT participant_id FROM zoom_visit_intervals WHERE visit_uuid = '%s' "
                          "AND joined_at IS NOT NULL AND left_at IS NOT NULL" % visit).split())
            events = q("SELECT v.events = (SELECT count(*) FROM zoom_events e WHERE e.visit_uuid = v.visit_uuid) "
                       "FROM zoom_visits v WHERE v.visit_uuid = '%s'" % visit)
            if people - whole or events != "t":
                r.fail("visit %s: timeline lacks %s (events counted: %s)" % (visit, sorted(people - whole)[:3], events))
                break
        processing = int(q("SELECT count(*) FROM files WHERE outcome = 'processing'"))
        if processing:
            r.fail("%d ledger rows left as processing" % processing)
        # The same bytes on two hosts: stored by one, a duplicate of it on the other.
        pairs = q("SELECT original_name || ' ' || string_agg(outcome, ',' ORDER BY outcome) FROM files "
                  "WHERE original_name LIKE 'same%' GROUP BY original_name").splitlines()
        for line in pairs:
            name, outcomes = line.split(" ")
            if outcomes.split(",").count("duplicate") != len(outcomes.split(",")) - 1:
                r.fail("%s: %s" % (name, outcomes))
                break
        if len(pairs) != len(shared):
            r.fail("%d shared files in the ledger, %d sent" % (len(pairs), len(shared)))
        hosts_seen = q("SELECT string_agg(DISTINCT host, ',' ORDER BY host) FROM files")
        r.notes.append("%d kills, 1 PostgreSQL restart, %d shared files, %d keys, %d Zoom events in %d visits; "
                       "ledger hosts %s" % (r.faults - 1, len(shared), len(must) + len(visits), len(zoom_must),
                                            len(zoom_visits), hosts_seen))
    finally:
        server.stop()
    return r


def campaign_fuzz(binary, work, full, seconds):
    r = Result("fuzz")
    build = subprocess.run([os.path.join(ROOT, "fuzz", "build.sh"), ".build-fuzz"] + (["asan"] if full else []),
                           capture_output=True, text=True)
    if build.returncode != 0:
        r.fail("fuzz targets did not build: " + build.stderr[-500:])
        return r
    # Bounded: a fixed seed, the same inputs from every clean clone; --full: a random seed, to explore.
    run = subprocess.run([os.path.join(ROOT, "fuzz", "run.sh"), str(seconds), "0" if full else "1"]
                         + (["asan"] if full else []), capture_output=True, text=True)
    for line in run.stdout.splitlines():
        r.notes.append(line)
        words = line.split()
        if len(words) > 2 and words[2].isdigit():
            r.sent += int(words[2])
    r.faults = 4
    if run.returncode != 0:
        r.fail("a fuzz target crashed")
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--only")
    ap.add_argument("--fuzz-seconds", type=int)
    args = ap.parse_args()
    binary = os.path.abspath(args.binary)
    order = ["crash", "diskfull", "overflow", "locked", "hostile", "slow", "cost", "multihost", "fuzz"]
    chosen = args.only.split(",") if args.only else order
    fuzz_seconds = args.fuzz_seconds or (600 if args.full else 60)
    results = []
    began = time.monotonic()
    for name in order:
        if name not in chosen:
            continue
        work = tempfile.mkdtemp(prefix="carespool-torture-%s-" % name)
        started = time.monotonic()
        try:
            if name == "fuzz":
                result = campaign_fuzz(binary, work, args.full, fuzz_seconds)
            else:
                result = globals()["campaign_" + name](binary, work, args.full)
        except Exception as error:  # a campaign that cannot run is a failure, never a skip
            result = Result(name)
            result.fail("%s: %s" % (type(error).__name__, error))
        result.seconds = time.monotonic() - started
        results.append(result)
        print("%-9s %s in %.0f s" % (name, "ok" if result.ok else "FAILED", result.seconds), flush=True)
        if result.ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print("  kept %s for a look" % work)
    print("all campaigns: %.0f s" % (time.monotonic() - began))
    print()
    print("| campaign | faults injected | files / requests / executions sent | lost | stored twice | verdict | notes |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print("| %s | %d | %d | %d | %d | %s | %s |" % (r.name, r.faults, r.sent, r.lost, r.twice,
                                                      "ok" if r.ok else "FAILED", "; ".join(r.notes)))
    sys.exit(0 if all(r.ok for r in results) else 1)


if __name__ == "__main__":
    main()
