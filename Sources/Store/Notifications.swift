// The notifications owed: one row per verdict and target, inserted in the verdict's own transaction,
// deleted once delivered. The queue is durable because the ledger is: a kill -9 between a verdict and its
// delivery leaves the row, and the next start delivers it.

import GRDB
import Kinds

/// Which outcomes owe a notification, and to which targets (`command`, `webhook`).
package struct NotifyPolicy: Sendable {
    package var outcomes: Set<String> = []
    package var targets: [String] = []

    package init(outcomes: Set<String> = [], targets: [String] = []) {
        self.outcomes = outcomes
        self.targets = targets
    }
}

/// A notification owed to one target.
package struct PendingNotification: Sendable, Equatable {
    package var fileID: String
    package var target: String
    package var kind: String
    package var outcome: String
    package var stored: Int
    package var duplicates: Int
    package var rejected: Int
    package var originalName: String
    package var finishedAt: String
    /// Attempts made so far.
    package var attempts: Int

    package init(
        fileID: String,
        target: String,
        kind: String,
        outcome: String,
        stored: Int,
        duplicates: Int,
        rejected: Int,
        originalName: String,
        finishedAt: String,
        attempts: Int
    ) {
        self.fileID = fileID
        self.target = target
        self.kind = kind
        self.outcome = outcome
        self.stored = stored
        self.duplicates = duplicates
        self.rejected = rejected
        self.originalName = originalName
        self.finishedAt = finishedAt
        self.attempts = attempts
    }
}

/// The queue of notifications owed, as the notifier sees it: SQLite's (`AppDatabase`), or the share of a
/// PostgreSQL database's queue that is this host's (the notifications of the files it gave verdicts).
package protocol OwedNotifications: Sendable {
    /// At most `limit` of `target`'s notifications due at `nowMillis`: never tried first, then the retries
    /// longest due.
    func dueNotifications(target: String, nowMillis: Int64, limit: Int) async throws -> [PendingNotification]
    /// When `target`'s next notification is due; nil when none is owed.
    func nextNotificationDue(target: String) async throws -> Int64?
    /// Delivered: no longer owed.
    func notificationDelivered(_ note: PendingNotification) async throws
    /// Not delivered: tried again at `nextMillis`, `error` kept for `status`.
    func notificationFailed(_ note: PendingNotification, nextMillis: Int64, error: String) async throws
    /// Drops what is owed to targets no longer configured; returns how many.
    func dropNotifications(except targets: [String]) async throws -> Int
}

extension AppDatabase: OwedNotifications {}

/// What `status` says of the queue.
package struct NotificationBacklog: Sendable {
    package var count: Int
    package var oldestFinishedAt: String?
    package var lastError: String?
    package var mostAttempts: Int

    package init(count: Int, oldestFinishedAt: String? = nil, lastError: String? = nil, mostAttempts: Int) {
        self.count = count
        self.oldestFinishedAt = oldestFinishedAt
        self.lastError = lastError
        self.mostAttempts = mostAttempts
    }
}

extension AppDatabase {
    func enqueueNotification(_ file: PreparedFile, _ report: FileReport, finishedAt: String, db: Database) throws {
        guard !notify.targets.isEmpty, notify.outcomes.contains(report.outcome.rawValue) else { return }
        for target in notify.targets {
            try db.cachedStatement(
                sql: """
                    INSERT OR IGNORE INTO notifications (file_id, target, kind, outcome, stored, duplicates, rejected,
                                                         original_name, finished_at, next_attempt)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)
                    """
            ).execute(arguments: [
                file.id, target, file.kind.rawValue, report.outcome.rawValue, report.stored, report.duplicates,
                report.rejected, file.originalName, finishedAt,
            ])
        }
    }

    /// At most `limit` of `target`'s notifications due at `nowMillis` (milliseconds since the epoch):
    /// never tried first (their `next_attempt` is 0), then the retries longest due.
    package func dueNotifications(target: String, nowMillis: Int64, limit: Int) throws(StoreError)
        -> [PendingNotification]
    {
        do {
            return try writer.read { db in
                try Row.fetchAll(
                    db,
                    sql: """
                        SELECT * FROM notifications WHERE target = ? AND next_attempt <= ?
                        ORDER BY next_attempt, finished_at LIMIT ?
                        """,
                    arguments: [target, nowMillis, limit]
                ).map(Self.pending)
            }
        } catch {
            throw StoreError(error)
        }
    }

    /// When `target`'s next notification is due (milliseconds since the epoch); nil when none is owed.
    package func nextNotificationDue(target: String) throws(StoreError) -> Int64? {
        do {
            return try writer.read { db in
                try Int64.fetchOne(
                    db,
                    sql: "SELECT min(next_attempt) FROM notifications WHERE target = ?",
                    arguments: [target]
                )
            }
        } catch {
            throw StoreError(error)
        }
    }

    /// Delivered: no longer owed.
    package func notificationDelivered(_ note: PendingNotification) throws(StoreError) {
        do {
            try writer.write { db in
                try db.execute(
                    sql: "DELETE FROM notifications WHERE file_id = ? AND target = ?",
                    arguments: [note.fileID, note.target]
                )
            }
        } catch {
            throw StoreError(error)
        }
    }

    /// Not delivered: tried again at `nextMillis`, `error` kept for `status` (no patient data: an exit
    /// status, an HTTP status, a connection error).
    package func notificationFailed(_ note: PendingNotification, nextMillis: Int64, error: String) throws(StoreError) {
        do {
            try writer.write { db in
                try db.execute(
                    sql: """
                        UPDATE notifications SET attempts = attempts + 1, next_attempt = ?, last_error = ?
                        WHERE file_id = ? AND target = ?
                        """,
                    arguments: [nextMillis, error, note.fileID, note.target]
                )
            }
        } catch {
            throw StoreError(error)
        }
    }

    /// Drops what is owed to targets no longer configured; returns how many.
    package func dropNotifications(except targets: [String]) throws(StoreError) -> Int {
        do {
            return try writer.write { db in
                let marks = databaseQuestionMarks(count: max(targets.count, 1))
                try db.execute(
                    sql: "DELETE FROM notifications WHERE target NOT IN (\(marks))",
                    arguments: StatementArguments(targets.isEmpty ? [""] : targets)
                )
                return db.changesCount
            }
        } catch {
            throw StoreError(error)
        }
    }

    /// The notifications not delivered yet.
    package func notificationBacklog() throws(StoreError) -> NotificationBacklog {
        do {
            return try writer.read { db in
                let row = try Row.fetchOne(
                    db,
                    sql: "SELECT count(*) AS n, min(finished_at) AS oldest, max(attempts) AS most FROM notifications"
                )
                let last = try String.fetchOne(
                    db,
                    sql:
                        "SELECT last_error FROM notifications WHERE last_error IS NOT NULL ORDER BY next_attempt DESC LIMIT 1"
                )
                return NotificationBacklog(
                    count: row?["n"] ?? 0,
                    oldestFinishedAt: row?["oldest"],
                    lastError: last,
                    mostAttempts: row?["most"] ?? 0
                )
            }
        } catch {
            throw StoreError(error)
        }
    }

    private static func pending(_ row: Row) -> PendingNotification {
        PendingNotification(
            fileID: row["file_id"],
            target: row["target"],
            kind: row["kind"],
            outcome: row["outcome"],
            stored: row["stored"],
            duplicates: row["duplicates"],
            rejected: row["rejected"],
            originalName: row["original_name"],
            finishedAt: row["finished_at"],
            attempts: row["attempts"]
        )
    }
}
