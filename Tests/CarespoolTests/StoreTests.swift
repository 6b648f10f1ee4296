import Crypto
import Foundation
import GRDB
import Kinds
import Store
import Testing

/// A real SQLite file per test.
@Suite struct StoreTests {
    let dir = TempDir("store")

    func open() throws -> AppDatabase { try AppDatabase.open(path: dir.file("db.sqlite3")) }

    func file(_ id: String, _ text: String, sha: String? = nil) throws -> PreparedFile {
        let parsed = try projectCatalog().appointments.read(Array(text.utf8))
        return PreparedFile(
            id: id,
            kind: .appointments,
            originalName: id + ".ndjson",
            sha256: sha ?? String(repeating: "a", count: 63) + String(id.last ?? "0"),
            size: text.utf8.count,
            receivedAt: "2026-11-23T00:00:00.000Z",
            content: .appointments(parsed)
        )
    }

    /// Every table's rows, for "nothing changed" checks.
    func dump(_ database: AppDatabase) throws -> [String] {
        try database.writer.read { db in
            try Row.fetchAll(
                db,
                sql:
                    "SELECT appointment_id, instant, event_type, patient_id, notes, file_id FROM appointment_events ORDER BY 1, 2"
            )
            .map(\.description)
                + Row.fetchAll(db, sql: "SELECT * FROM appointments ORDER BY 1").map(\.description)
        }
    }

    /// A write-ahead log that grew past 64 MiB (one large transaction) is cut back to 64 MiB when it
    /// starts over after a checkpoint, instead of keeping its largest size for as long as the daemon runs.
    @Test func aWriteAheadLogThatGrewIsCutBackWhenItStartsOver() throws {
        defer { dir.cleanup() }
        let database = try open()
        let log = dir.file("db.sqlite3") + "-wal"
        func size() throws -> Int { try FileManager.default.attributesOfItem(atPath: log)[.size] as? Int ?? -1 }
        try database.writer.write { db in
            try db.execute(sql: "CREATE TABLE scratch (b BLOB)")
            for _ in 0..<80 { try db.execute(sql: "INSERT INTO scratch VALUES (zeroblob(1048576))") }
        }
        let grown = try size()
        try database.checkpoint()
        try database.writer.write { db in try db.execute(sql: "INSERT INTO scratch VALUES (x'00')") }
        let after = try size()
        #expect(grown > 80 << 20, "log \(grown >> 20) MiB")
        #expect(after <= 64 << 20, "log \(after >> 20) MiB after starting over")
    }

    @Test func storesRecordsAndTheLedgerRowTogether() throws {
        defer { dir.cleanup() }
        let database = try open()
        let text = [event("A", "2025-01-10T12:30:00Z"), event("B", "2025-01-10T12:30:00Z"), event("C", "bad")]
            .joined(separator: "\n")
        let result = try database.commit([try file("f1", text)], finishedAt: "2026-11-23T00:00:01.000Z")
        #expect(result[0].report.outcome == .partial)
        #expect(result[0].report.stored == 2)
        #expect(result[0].report.rejected == 1)
        let row = try database.writer.read { db in
            try Row.fetchOne(
                db,
                sql: "SELECT outcome, stored, duplicates, rejected, error, sha256, size FROM files WHERE id = 'f1'"
            )
        }
        #expect(row?["outcome"] == "partial")
        #expect(row?["stored"] == 2)
        #expect((row?["error"] as String?)?.hasPrefix("1 of 3 records rejected; record 3 /timestamp") == true)
    }

    @Test func replayingAFileIdOrItsRecordsChangesNothing() throws {
        defer { dir.cleanup() }
        let database = try open()
        let text = [event("A", "2025-01-10T12:30:00Z"), event("B", "2025-01-11T12:30:00Z", type: "cancelled")]
            .joined(separator: "\n")
        _ = try database.commit([try file("f1", text)], finishedAt: "t1")
        let before = try dump(database)
        // The same file id again (recovery after a crash): its stored verdict, nothing written.
        let replay = try database.commit([try file("f1", text)], finishedAt: "t2")
        #expect(replay[0].replayed)
        #expect(replay[0].report.stored == 2)
        // The same records under new ids, many times: duplicates only.
        for n in 2...5 {
            let again = try database.commit(
                [try file("f\(n)", text, sha: String(repeating: "b", count: 63) + "\(n)")],
                finishedAt: "t"
            )
            #expect(again[0].report.outcome == .duplicate)
            #expect(again[0].report.duplicates == 2)
        }
        #expect(try dump(database) == before)
    }

    @Test func aByteIdenticalFileIsADuplicateBySha256() throws {
        defer { dir.cleanup() }
        let database = try open()
        let text = event("A", "2025-01-10T12:30:00Z")
        _ = try database.commit([try file("f1", text, sha: String(repeating: "c", count: 64))], finishedAt: "t")
        let second = try database.commit(
            [try file("f2", text, sha: String(repeating: "c", count: 64))],
            finishedAt: "t"
        )
        #expect(second[0].report.outcome == .duplicate)
        #expect(second[0].report.duplicateOf == "f1")
        #expect(second[0].report.duplicates == 0)
    }

    @Test func aDifferentEventUnderTheSameKeyIsAConflictNamingTheFirstFile() throws {
        defer { dir.cleanup() }
        let database = try open()
        _ = try database.commit([try file("f1", event("A", "2025-01-10T12:30:00Z", notes: "one"))], finishedAt: "t")
        // Same instant written with another offset: the same key.
        let other = try database.commit(
            [try file("f2", event("A", "2025-01-10T13:30:00+01:00", notes: "two"))],
            finishedAt: "t"
        )
        #expect(other[0].report.outcome == .rejected)
        #expect(
            other[0].report.errors.map(\.message) == [
                "conflicts with the event stored from file f1 under the same appointment_id and timestamp"
            ]
        )
    }

    @Test func anOlderEventArrivingLateNeverOverwritesANewerState() throws {
        defer { dir.cleanup() }
        let database = try open()
        _ = try database.commit(
            [try file("f1", event("A", "2025-01-12T09:00:00Z", type: "cancelled", notes: "new"))],
            finishedAt: "t"
        )
        _ = try database.commit(
            [try file("f2", event("A", "2025-01-10T09:00:00Z", type: "scheduled", notes: "old"))],
            finishedAt: "t"
        )
        _ = try database.commit(
            [try file("f3", event("A", "2025-01-11T09:00:00Z", type: "updated", notes: "mid"))],
            finishedAt: "t"
        )
        let state = try database.writer.read { db in
            try Row.fetchOne(
                db,
                sql: "SELECT status, notes, event_timestamp, file_id FROM appointments WHERE appointment_id = 'A'"
            )
        }
        #expect(state?["status"] == "cancelled")
        #expect(state?["notes"] == "new")
        #expect(state?["file_id"] == "f1")
        let events = try database.writer.read { db in
            try Int.fetchOne(db, sql: "SELECT count(*) FROM appointment_events")
        }
        #expect(events == 3)
    }

    @Test func aBatchCommitsManyFilesInOneTransaction() throws {
        defer { dir.cleanup() }
        let database = try open()
        let files = try (0..<50).map { n in
            try file("g\(n)", event("A\(n)", "2025-01-10T12:30:00Z"), sha: String(format: "%064d", n))
        }
        let results = try database.commit(files, finishedAt: "t")
        #expect(results.allSatisfy { $0.report.outcome == .accepted })
        let count = try database.writer.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM files") }
        #expect(count == 50)
    }

    @Test func theLedgerKeepsTheColumnsOperatorsQuery() throws {
        defer { dir.cleanup() }
        let database = try open()
        let columns = try database.writer.read { db in try db.columns(in: "files").map(\.name) }
        for name in [
            "id", "kind", "original_name", "sha256", "size", "received_at", "finished_at", "outcome", "stored",
            "duplicates", "rejected", "error",
        ] {
            #expect(columns.contains(name), "\(name)")
        }
    }
}

@Suite struct StoreDurabilityTests {
    let dir = TempDir("durability")

    /// A commit must be on disk before any file moves (DESIGN.md I1): the writer runs with
    /// `synchronous = FULL` (2), also after GRDB's own WAL set-up, which picks NORMAL, and again after a
    /// large file's chunk, whose own commit runs at NORMAL with foreign keys off.
    @Test func theWriterFsyncsEveryCommit() throws {
        defer { dir.cleanup() }
        let database = try AppDatabase.open(path: dir.file("db.sqlite3"))
        func settings() throws -> [Int?] {
            try database.writer.writeWithoutTransaction { db in
                [try Int.fetchOne(db, sql: "PRAGMA synchronous"), try Int.fetchOne(db, sql: "PRAGMA foreign_keys")]
            }
        }
        #expect(try settings() == [2, 1])
        let event =
            #"{"event_type":"appointment.scheduled","appointment_id":"A1","patient_id":"P1","#
            + #""timestamp":"2025-01-10T12:30:00Z"}"#
        let events = try projectCatalog().appointments.read(Array(event.utf8))
        let report = try database.commitChunk(.appointments(events.items), fileID: "chunked")
        #expect(report.stored == 1)
        #expect(try settings() == [2, 1])
    }

    /// A large file's chunks share a transaction (one commit per chunk rewrote a page of every unique
    /// index per row): readers see nothing of it until it commits, a rollback keeps nothing of it, and the
    /// writer's settings come back either way.
    @Test func aLargeFilesChunksShareATransactionThatCommitsOrRollsBackWhole() throws {
        defer { dir.cleanup() }
        let database = try AppDatabase.open(path: dir.file("db.sqlite3"))
        func chunk(_ id: String) throws -> AppDatabase.Chunk {
            let event =
                #"{"event_type":"appointment.scheduled","appointment_id":""# + id + #"","patient_id":"P1","#
                + #""timestamp":"2025-01-10T12:30:00Z"}"#
            return .appointments(try projectCatalog().appointments.read(Array(event.utf8)).items)
        }
        func stored() throws -> Int {
            try database.writer.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM appointment_events")! }
        }
        func settings() throws -> [Int?] {
            try database.writer.writeWithoutTransaction { db in
                [try Int.fetchOne(db, sql: "PRAGMA synchronous"), try Int.fetchOne(db, sql: "PRAGMA foreign_keys")]
            }
        }
        #expect(try database.writeChunk(try chunk("T1"), fileID: "big").stored == 1)
        #expect(try database.writeChunk(try chunk("T2"), fileID: "big").stored == 1)
        #expect(try stored() == 0, "uncommitted")
        database.rollbackChunks()
        #expect(try stored() == 0 && settings() == [2, 1])
        _ = try database.writeChunk(try chunk("T3"), fileID: "big")
        _ = try database.writeChunk(try chunk("T4"), fileID: "big")
        try database.commitChunks()
        #expect(try stored() == 2 && settings() == [2, 1])
        try database.commitChunks()  // nothing open: nothing happens
        #expect(try stored() == 2)
    }
}

/// Shipped migrations never change: each frozen literal keeps the digest it shipped with.
@Suite struct FrozenMigrationsTests {
    @Test func theFrozenMigrationsAreTheTextsThatShipped() {
        func digest(_ text: String) -> String {
            SHA256.hash(data: Array(text.utf8)).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
        }
        // The digests of the writers' `schema` constants these migrations executed until they were frozen
        // (computed from the last commit that had them, independently of Swift's string literal rules).
        #expect(digest(FrozenMigrations.zoomV2) == "1314aaadcca4be845e84083058f487c4871246a6734b95524de3bc339d7728e3")
        #expect(digest(FrozenMigrations.intakeV3) == "beeaed51ee9bc94ac2fc97e765781e329986be4c0c83354e7d79954db8fccb3a")
        #expect(digest(FrozenMigrations.auditV5) == "9a8e5bbb8251d5f4ffa8f70cfed39340d82b8df47f6bd02abd79aea1a5950780")
        // Frozen as written (migration v10 shipped as this literal).
        #expect(
            digest(FrozenMigrations.zoomReportsV10)
                == "95a35ae4259ff7b995f9cce7ef8b3079a6fa7a28df0557f8856b8ac6eca51d52"
        )
    }
}

/// Migration v10 on a database that already holds Zoom webhooks (as an upgrade meets it): what the
/// merge needs is filled in from what the rows hold.
@Suite struct ZoomReportsMigrationTests {
    @Test func v10FillsInWhatTheMergeNeedsFromTheRowsAlreadyStored() throws {
        let dir = TempDir("v10")
        let queue = try DatabaseQueue(path: dir.file("old.sqlite3"))
        try AppDatabase.migrator.migrate(queue, upTo: "v9: notifications owed")
        try queue.write { db in
            try db.execute(
                sql: """
                    INSERT INTO files (id, kind, original_name, sha256, size, received_at, finished_at, outcome, report)
                    VALUES ('f1', 'zoom', 'e.json', ?, 1, 't', 't', 'accepted', '{}');
                    INSERT INTO zoom_events (meeting_id, visit_uuid, event_name, event_ts, participant_id, participant_name,
                        join_time, interpreter_requested, raw_json, file_id, record)
                    VALUES ('93812345678', 'v==', 'meeting.participant_joined', 1795186805000, '1', 'Zoë',
                        '2026-11-20T15:00:05Z', 0,
                        '{"payload":{"object":{"participant":{"email":"zoe@example.org"}}}}', 'f1', 1),
                        ('93812345678', 'v==', 'meeting.participant_left', 1795188600000, '1', 'Zoë', NULL, 0,
                        'not json', 'f1', 2);
                    INSERT INTO zoom_visits (visit_uuid, meeting_id, interpreter_requested, participants, events)
                    VALUES ('v==', '93812345678', 0, 1, 2);
                    INSERT INTO zoom_visit_intervals (visit_uuid, participant_id, participant_name, joined_at, left_at)
                    VALUES ('v==', '1', 'Zoë', '2026-11-20T15:00:05.000Z', '2026-11-20T15:30:00.000Z');
                    """,
                arguments: [String(repeating: "a", count: 64)]
            )
        }
        try AppDatabase.migrator.migrate(queue)
        let (emails, visit, interval) = try queue.read { db in
            (
                try String?.fetchAll(db, sql: "SELECT participant_email FROM zoom_events ORDER BY seq"),
                try Row.fetchOne(db, sql: "SELECT first_s, last_s FROM zoom_visits")!,
                try Row.fetchOne(
                    db,
                    sql: "SELECT meeting_id, joined_s, left_s, joined_m, source FROM zoom_visit_intervals"
                )!
            )
        }
        #expect(emails == ["zoe@example.org", nil])
        #expect(visit["first_s"] == 1_795_186_805 && visit["last_s"] == 1_795_188_600)
        #expect(interval["meeting_id"] == "93812345678")
        #expect(interval["joined_s"] == 1_795_186_805 && interval["left_s"] == 1_795_188_600)
        #expect(interval["joined_m"] == 1_795_186_805 / 60)
        #expect(interval["source"] == "webhook")
    }
}

/// Migration v11: the ledger names the host of each verdict; rows from before it name none.
@Suite struct LedgerHostMigrationTests {
    @Test func rowsBeforeV11NameNoHostAndEachVerdictAfterItNamesItsHost() throws {
        let dir = TempDir("v11")
        defer { dir.cleanup() }
        let path = dir.file("old.sqlite3")
        let queue = try DatabaseQueue(path: path)
        try AppDatabase.migrator.migrate(queue, upTo: "v10: Zoom participants reports in the visit timelines")
        try queue.write { db in
            try db.execute(
                sql: """
                    INSERT INTO files (id, kind, original_name, sha256, size, received_at, finished_at, outcome, report)
                    VALUES ('old', 'appointments', 'e.json', ?, 1, 't', 't', 'accepted', '{}')
                    """,
                arguments: [String(repeating: "a", count: 64)]
            )
        }
        try queue.close()
        var database = try AppDatabase.open(path: path)
        database.host = "clinic-b"
        let text = event("H-1", "2026-12-07T10:00:00Z")
        let file = PreparedFile(
            id: "new",
            kind: .appointments,
            originalName: "h.json",
            sha256: PostgresLedgerTests.sha(text),
            size: text.utf8.count,
            receivedAt: "t",
            content: .appointments(try projectCatalog().appointments.read(Array(text.utf8)))
        )
        #expect(try database.commit([file], finishedAt: "t")[0].report.outcome == .accepted)
        #expect(try database.ledgerEntry(id: "new")?.host == "clinic-b")
        #expect(try database.ledgerEntry(id: "old")?.host == nil)
        let listed = try database.ledger(outcomes: ["accepted"], kind: nil, since: nil, limit: 10)
        #expect(Set(listed.map { "\($0.id):\($0.host ?? "-")" }) == ["new:clinic-b", "old:-"])
    }
}
