"""The peer in `make bench`: a plain Python loader of an intake CSV, as a team would write it with the
standard library alone (csv + sqlite3), into the same normalised tables carespool keeps (patients,
persons, visits, with their unique keys; no history, no ledger). It validates what the schema requires
(required fields non-empty, lengths, RFC 3339 dates), keeps a patient's latest person fields, and dedupes
visits by their account number. One transaction for the file, as such scripts do.

    python3 bench/python_loader.py FILE.csv DB.sqlite3     prints: rows=N stored=N rejected=N seconds=S
"""

import csv
import datetime
import re
import sqlite3
import sys
import time

DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
SCHEMA = """
CREATE TABLE patients (id INTEGER PRIMARY KEY, mrn TEXT NOT NULL UNIQUE);
CREATE TABLE persons (patient_id INTEGER PRIMARY KEY REFERENCES patients (id), first_name TEXT NOT NULL,
                      last_name TEXT NOT NULL, birth_date TEXT NOT NULL);
CREATE TABLE visits (id INTEGER PRIMARY KEY, visit_account_number TEXT NOT NULL UNIQUE,
                     patient_id INTEGER NOT NULL REFERENCES patients (id), visit_date TEXT NOT NULL, reason TEXT);
CREATE INDEX visits_by_patient ON visits (patient_id);
"""


def valid_date(text):
    if not DATE.match(text):
        return False
    try:
        datetime.date.fromisoformat(text)
        return True
    except ValueError:
        return False


def valid(row):
    for key, most in (("mrn", 64), ("visit_account_number", 64), ("first_name", 200), ("last_name", 200)):
        value = row.get(key) or ""
        if not value or len(value) > most:
            return False
    if not valid_date(row.get("birth_date") or "") or not valid_date(row.get("visit_date") or ""):
        return False
    return len(row.get("reason") or "") <= 1000


def load(path, database):
    start = time.monotonic()
    db = sqlite3.connect(database)
    db.executescript(SCHEMA)
    rows = rejected = 0
    batch = []

    def flush():
        db.executemany("INSERT OR IGNORE INTO patients (mrn) VALUES (?)", [(r["mrn"],) for r in batch])
        db.executemany(
            "INSERT INTO persons (patient_id, first_name, last_name, birth_date) "
            "VALUES ((SELECT id FROM patients WHERE mrn = ?), ?, ?, ?) "
            "ON CONFLICT (patient_id) DO UPDATE SET first_name = excluded.first_name, "
            "last_name = excluded.last_name, birth_date = excluded.birth_date",
            [(r["mrn"], r["first_name"], r["last_name"], r["birth_date"]) for r in batch])
        db.executemany(
            "INSERT OR IGNORE INTO visits (visit_account_number, patient_id, visit_date, reason) "
            "VALUES (?, (SELECT id FROM patients WHERE mrn = ?), ?, ?)",
            [(r["visit_account_number"], r["mrn"], r["visit_date"], r["reason"] or None) for r in batch])
        batch.clear()

    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            rows += 1
            if not valid(row):
                rejected += 1
                continue
            batch.append(row)
            if len(batch) >= 10000:
                flush()
    flush()
    db.commit()
    stored = db.execute("SELECT count(*) FROM visits").fetchone()[0]
    db.close()
    return rows, stored, rejected, time.monotonic() - start


if __name__ == "__main__":
    rows, stored, rejected, seconds = load(sys.argv[1], sys.argv[2])
    print("rows=%d stored=%d rejected=%d seconds=%.2f" % (rows, stored, rejected, seconds))
