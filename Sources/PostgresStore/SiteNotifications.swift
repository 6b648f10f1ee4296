import Logging
import PostgresNIO
package import Store

/// This host's share of the site's notification queue: the notifications owed for the files whose verdict
/// this host gave (their ledger row names it). Each host delivers its own, so two hosts never deliver one
/// notification at once; one owed by a host that is down waits for it to start again (a kill -9 between
/// a delivery and its record delivers it again after the restart, as on one host).
package final class SiteNotifications: OwedNotifications {
    package let site: SiteDatabase

    package init(site: SiteDatabase) { self.site = site }

    package func dueNotifications(target: String, nowMillis: Int64, limit: Int) async throws
        -> [PendingNotification]
    {
        let host = site.host
        let logger = site.logger
        return try await site.transaction { connection in
            let rows = try await connection.query(
                """
                SELECT n.file_id, n.target, n.kind, n.outcome, n.stored, n.duplicates, n.rejected, n.original_name,
                       n.finished_at, n.attempts
                FROM notifications n JOIN files f ON f.id = n.file_id
                WHERE n.target = \(target) AND n.next_attempt <= \(nowMillis) AND f.host = \(host)
                ORDER BY n.next_attempt, n.finished_at LIMIT \(limit)
                """,
                logger: logger
            )
            var due: [PendingNotification] = []
            for try await (file, target, kind, outcome, stored, duplicates, rejected, name, finished, attempts)
                in rows.decode((String, String, String, String, Int, Int, Int, String, String, Int).self)
            {
                due.append(
                    PendingNotification(
                        fileID: file,
                        target: target,
                        kind: kind,
                        outcome: outcome,
                        stored: stored,
                        duplicates: duplicates,
                        rejected: rejected,
                        originalName: name,
                        finishedAt: finished,
                        attempts: attempts
                    )
                )
            }
            return due
        }
    }

    package func nextNotificationDue(target: String) async throws -> Int64? {
        let host = site.host
        let logger = site.logger
        return try await site.transaction { connection in
            let rows = try await connection.query(
                """
                SELECT min(n.next_attempt) FROM notifications n JOIN files f ON f.id = n.file_id
                WHERE n.target = \(target) AND f.host = \(host)
                """,
                logger: logger
            )
            for try await next in rows.decode(Int64?.self) { return next }
            return nil
        }
    }

    package func notificationDelivered(_ note: PendingNotification) async throws {
        let logger = site.logger
        try await site.transaction { connection -> Void in
            try await connection.query(
                "DELETE FROM notifications WHERE file_id = \(note.fileID) AND target = \(note.target)",
                logger: logger
            )
        }
    }

    package func notificationFailed(_ note: PendingNotification, nextMillis: Int64, error: String) async throws {
        let logger = site.logger
        try await site.transaction { connection -> Void in
            try await connection.query(
                """
                UPDATE notifications SET attempts = attempts + 1, next_attempt = \(nextMillis), last_error = \(error)
                WHERE file_id = \(note.fileID) AND target = \(note.target)
                """,
                logger: logger
            )
        }
    }

    /// Drops what this host owes to targets it no longer has (another host's configuration is its own).
    package func dropNotifications(except targets: [String]) async throws -> Int {
        let host = site.host
        let logger = site.logger
        return try await site.transaction { connection in
            let rows = try await connection.query(
                """
                WITH dropped AS (
                    DELETE FROM notifications n USING files f
                    WHERE f.id = n.file_id AND f.host = \(host) AND n.target <> ALL(\(targets)::text[])
                    RETURNING 1)
                SELECT count(*)::int8 FROM dropped
                """,
                logger: logger
            )
            for try await count in rows.decode(Int.self) { return count }
            return 0
        }
    }
}
