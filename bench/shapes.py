"""Adversarial input shapes of a given size, shared by `make bench` (MB/s and peak RSS of each against a
plain file of the same size) and the `cost` torture campaign (each posted and dropped while ordinary
files flow). Each shape is what a hostile sender or a partner's odd export can make of N bytes: many tiny
records, many keys, one long string, deep nesting, a huge CSV field or row. Deterministic for a seed."""
import json, random

FIRST = ["José", "Zoë", "Anaïs", "Łukasz", "Nguyễn", "María José", "Søren", "Chloé", "O'Brien", "Ana"]
LAST = ["Müller", "García Márquez", "Dubois", "Østergaard", "Smith-Jones", "Núñez", "Kowalski", "Lefèvre"]
REASONS = ["follow-up", "annual physical, fasting", 'knee pain "left"', "télé-consultation", "rash"]
INTAKE_HEADER = "mrn,first_name,last_name,birth_date,visit_account_number,visit_date,reason"


def plain_events(size, rng):
    """Ordinary appointment events as a JSON array, keys in shuffled order, repeats of patients."""
    out, n, total = [], 0, 2
    while total < size:
        fields = [("event_type", "appointment.scheduled"), ("appointment_id", "A%07d" % rng.randrange(10 ** 7)),
                  ("patient_id", "P%05d" % rng.randrange(5000)), ("timestamp", "2025-01-%02dT%02d:30:00Z" % (
                      1 + rng.randrange(28), rng.randrange(24))),
                  ("notes", rng.choice(FIRST) + " " + rng.choice(LAST))]
        rng.shuffle(fields)
        text = json.dumps(dict(fields), ensure_ascii=False)
        out.append(text)
        total += len(text.encode()) + 1
        n += 1
    return ("[" + ",".join(out) + "]").encode()


def plain_csv(size, rng):
    rows, total = [INTAKE_HEADER], len(INTAKE_HEADER) + 1
    n = 0
    while total < size:
        mrn = rng.randrange(10 ** 7)
        reason = rng.choice(REASONS)
        if "," in reason or '"' in reason:
            reason = '"' + reason.replace('"', '""') + '"'
        row = "M%07d,%s,%s,19%02d-%02d-%02d,V%09d,2025-03-%02d,%s" % (
            mrn, rng.choice(FIRST), rng.choice(LAST), 40 + rng.randrange(60), 1 + rng.randrange(12),
            1 + rng.randrange(28), rng.randrange(10 ** 9), 1 + rng.randrange(28), reason)
        rows.append(row)
        total += len(row.encode()) + 1
        n += 1
    return ("\n".join(rows) + "\n").encode()


def tiny_rows_mixed(size, rng):
    """Tiny rejected rows that rarely repeat the row before: each row a random one of several patterns of
    empty and bad fields, one with a different bad date each time (what a reuse of the last row's reason
    cannot help)."""
    patterns = [",,,,,,", "x,,,,,,", ",y,,,,,", ",,z,,,,", ",,,%d,,,", "x,y,,,,,", ",,,,v,,", ",,,,,%d,"]
    out = [(INTAKE_HEADER + "\n").encode()]
    total = len(out[0])
    n = 0
    while total < size:
        pattern = rng.choice(patterns)
        row = ((pattern % n) if "%d" in pattern else pattern).encode() + b"\n"
        out.append(row)
        total += len(row)
        n += 1
    return b"".join(out)


def shapes(size, seed=1):
    """(kind, name, suffix, bytes) for each adversarial shape of about `size` bytes, and the plain files
    they are measured against (names starting with 'plain')."""
    rng = random.Random(seed)
    yield "appointments", "plain-json", "json", plain_events(size, rng)
    yield "appointments", "tiny-records", "json", b"[" + b"1," * (size // 2 - 1) + b"1]"
    yield "appointments", "empty-objects", "json", b"[" + b"{}," * (size // 3 - 1) + b"{}]"
    yield "appointments", "ndjson-tiny-lines", "ndjson", b"1\n" * (size // 2)
    keys = size // 13
    yield "appointments", "many-keys", "json", (
        "{" + ",".join('"k%07d":%d' % (i, i % 10) for i in range(keys)) + "}").encode()
    yield "appointments", "deep-values", "json", b'{"a":[' + b"[1]," * (size // 4 - 2) + b"1]}"
    yield "appointments", "long-string", "json", (
        '{"event_type":"appointment.scheduled","appointment_id":"A1","patient_id":"P1",'
        '"timestamp":"2025-01-10T12:30:00Z","notes":"' + "é" * (size // 2 - 60) + '"}').encode()
    deep = b"[" * 500 + b"1" + b"]" * 500  # an element nested 501 deep, near the parser's 512
    yield "appointments", "max-nesting", "json", b"[" + b",".join([deep] * (size // (len(deep) + 1))) + b"]"
    yield "intake", "plain-csv", "csv", plain_csv(size, rng)
    yield "intake", "csv-huge-field", "csv", (
        INTAKE_HEADER + '\nM1,Zoë,Müller,1980-01-01,V1,2025-03-01,"' + "x" * (size - 120) + '"\n').encode()
    columns = size // 16
    yield "intake", "csv-many-columns", "csv", (
        ",".join("c%d" % i for i in range(columns)) + "\n" + ",".join("v" for _ in range(columns)) + "\n").encode()
    yield "intake", "csv-tiny-rows", "csv", (INTAKE_HEADER + "\n").encode() + b",,,,,,\n" * (size // 7)
    yield "intake", "csv-tiny-rows-mixed", "csv", tiny_rows_mixed(size, rng)
