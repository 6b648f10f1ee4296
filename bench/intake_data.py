"""Realistic intake CSV files for the benchmark, seeded: MRNs and visit account numbers either scrambled
(several EHRs' formats, in no order: what real feeds send) or ascending (the same rows with keys numbered
in order), 30% of rows repeating an earlier patient (1 in 10 of those with a changed last name), names
with accents, empty and quoted reasons, the columns in an order of their own.

    python3 bench/intake_data.py OUT.csv ROWS [--ascending] [--seed N]
"""

import argparse
import random

COLUMNS = ["mrn", "first_name", "last_name", "birth_date", "visit_account_number", "visit_date", "reason"]
FIRST = ["Zoë", "José", "Ana", "Björn", "Chloé", "Łukasz", "Mária", "Jean-Luc", "Siobhán", "Nguyễn", "Aïcha",
         "Søren", "Ingrid", "Mateo", "Émilie", "Kenji", "Fatima", "Olaf", "Renée", "Dmitri"]
LAST = ["Müller", "García", "O'Brien", "Núñez", "Dvořák", "Lefèvre", "Smith", "Kowalski", "Åström", "Nakamura",
        "Østergaard", "Bianchi", "Jones", "Schäfer", "Popescu", "Çelik", "Van der Berg", "Ferreira", "Kim", "Novák"]
REASONS = ["", "", "follow-up", "annual check-up", "\"knee pain, left\"", "telehealth: medication review",
           "\"says \"\"urgent\"\"\"", "vaccination", "\"post-op, day 10\"", "lab results"]
EHR_PREFIXES = ["E", "CRN", "EP", "MT-"]


def mrn_of(patient, ascending):
    if ascending:
        return "M%08d" % patient
    # A bijection of 0..10^8-1 (48271 is coprime with 10^8): unique, in no order, several formats.
    scrambled = (patient * 48271 + 12345) % 100000000
    return "%s%08d" % (EHR_PREFIXES[scrambled % 4], scrambled)


def visit_of(row, ascending):
    if ascending:
        return "V%010d" % row
    return "V%010d" % ((row * 2654435761 + 7) % 10000000000)  # a bijection of 0..10^10-1


def write(path, rows, ascending=False, seed=20261206):
    rng = random.Random(seed)
    order = COLUMNS[:]
    random.Random(seed + 1).shuffle(order)
    people = []  # (mrn, first, last, birth)
    with open(path, "w", encoding="utf-8", newline="") as out:
        out.write(",".join(order) + "\n")
        lines = []
        for row in range(rows):
            if people and rng.random() < 0.3:
                mrn, first, last, birth = people[rng.randrange(len(people))]
                if rng.random() < 0.1:
                    last = rng.choice(LAST) + "-" + rng.choice(LAST)
            else:
                mrn = mrn_of(len(people), ascending)
                first, last = rng.choice(FIRST), rng.choice(LAST)
                birth = "%04d-%02d-%02d" % (rng.randint(1930, 2020), rng.randint(1, 12), rng.randint(1, 28))
                people.append((mrn, first, last, birth))
            visit = "%04d-%02d-%02d" % (rng.randint(2023, 2025), rng.randint(1, 12), rng.randint(1, 28))
            reason = rng.choice(REASONS)
            last_field = '"%s"' % last if "," in last else last
            values = {"mrn": mrn, "first_name": first, "last_name": last_field, "birth_date": birth,
                      "visit_account_number": visit_of(row, ascending), "visit_date": visit, "reason": reason}
            lines.append(",".join(values[c] for c in order))
            if len(lines) >= 10000:
                out.write("\n".join(lines) + "\n")
                lines = []
        if lines:
            out.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("rows", type=int)
    ap.add_argument("--ascending", action="store_true")
    ap.add_argument("--seed", type=int, default=20261206)
    args = ap.parse_args()
    write(args.out, args.rows, args.ascending, args.seed)
