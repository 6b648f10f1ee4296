import GRDB
import JSONSchema
import Kinds

/// What a transaction's Zoom writes touched: the visits to refresh, and the meetings whose report rows
/// are to be resolved to visits again (each once per transaction).
struct ZoomTouched {
    var visits = Set<String>()
    var meetings = Set<String>()

    /// Refreshes every touched visit, then resolves the report rows of every touched meeting that has any
    /// (a webhook visit's span changed, or new rows came), refreshing the visits that gained or lost rows.
    func refresh(db: Database) throws {
        let writer = ZoomWriter(db: db, fileID: "")
        for uuid in visits.sorted() { try writer.refreshVisit(uuid) }
        var meetings = self.meetings
        for uuid in visits {
            if let meeting = try String.fetchOne(
                db,
                sql: "SELECT meeting_id FROM zoom_visits WHERE visit_uuid = ?",
                arguments: [uuid]
            ) {
                meetings.insert(meeting)
            }
        }
        let reports = ZoomReportWriter(db: db, fileID: "")
        for meeting in meetings.sorted() where !meeting.isEmpty {
            let hasRows =
                try Bool.fetchOne(
                    db,
                    sql: "SELECT EXISTS (SELECT 1 FROM zoom_report_intervals WHERE meeting_id = ?)",
                    arguments: [meeting]
                ) ?? false
            if hasRows { try reports.resolve(meeting: meeting) }
        }
    }
}

/// Writes the rows of Zoom participants reports, deduplicated on their natural key (meeting, visit uuid
/// when the report names one, participant — id, else e-mail, else name — and join second), and resolves
/// them to visits: the one the report names, else the webhook visit of the meeting whose span holds the
/// join, else a visit of the report's own (`report:<meeting>:<first join>`). A row that a webhook interval
/// already holds whole is a duplicate; one that completes it (a missed leave) is stored and merged.
struct ZoomReportWriter {
    let db: Database
    let fileID: String

    func write(_ items: [Item<ZoomReportRow>], touched: inout ZoomTouched) throws -> FileReport {
        var stored = 0
        var duplicates = 0
        var rejected = 0
        var errors: [RecordProblem] = []
        for item in items {
            switch item.result {
            case .failure(let problems):
                rejected += 1
                problems.append(to: &errors)
            case .success(let row):
                switch try insert(row, record: item.number) {
                case .inserted:
                    stored += 1
                    if let uuid = row.meetingUUID {
                        touched.visits.insert(uuid)
                    } else {
                        touched.meetings.insert(row.meetingID)
                    }
                case .ours:
                    stored += 1
                case .duplicate:
                    duplicates += 1
                case .contradicts:
                    rejected += 1
                    errors.append(
                        RecordProblem(
                            record: item.number,
                            line: item.line,
                            pointer: nil,
                            message:
                                "conflicts with the webhooks: they have this participant joining in the same second and "
                                + "leaving at another time; not taken over them"
                        )
                    )
                case .conflict(let earlier):
                    rejected += 1
                    errors.append(
                        RecordProblem(
                            record: item.number,
                            line: item.line,
                            pointer: nil,
                            message:
                                "conflicts with the row stored from file \(earlier) for the same meeting, participant and "
                                + "join time: a different leave time"
                        )
                    )
                }
            }
        }
        return FileReport(
            outcome: FileReport.outcome(stored: stored, duplicates: duplicates, rejected: rejected),
            stored: stored,
            duplicates: duplicates,
            rejected: rejected,
            errors: errors
        )
    }

    private enum Insertion {
        case inserted, duplicate, ours
        case conflict(String)
        /// The webhooks have this join with another leave.
        case contradicts
    }

    /// Whether a webhook interval of the row's meeting has the same person joining in the same second —
    /// leaving in second `left`, or (nil) having left at all. The same person: by id when the row has one
    /// (a webhook interval always has), else by e-mail, else — only where the interval has no e-mail — by
    /// name. Each lookup is exact in a partial index (migration v10): never a scan of that second's joins.
    private func webhooksHold(_ row: ZoomReportRow, leaving left: Int64?) throws -> Bool {
        let leave = left == nil ? "left_s IS NOT NULL" : "left_s = ?"
        var queries: [(String, StatementArguments)] = []
        let base: StatementArguments = [row.meetingID, row.joined]
        let tail: StatementArguments = left.map { [$0] } ?? []
        if let id = row.participantID {
            queries.append(("participant_id = ?", base + [id] + tail))
        } else if let email = row.email {
            queries.append(
                ("participant_email IS NOT NULL AND lower(participant_email) = ?", base + [email.lowercased()] + tail)
            )
            if let name = row.name {
                queries.append(("participant_email IS NULL AND participant_name = ?", base + [name] + tail))
            }
        } else if let name = row.name {
            queries.append(("participant_name = ?", base + [name] + tail))
        }
        for (who, arguments) in queries {
            let found = try Bool.fetchOne(
                db.cachedStatement(
                    sql: """
                        SELECT EXISTS (SELECT 1 FROM zoom_visit_intervals
                        WHERE source = 'webhook' AND meeting_id = ? AND joined_s = ? AND \(who) AND \(leave))
                        """
                ),
                arguments: arguments
            )
            if found == true { return true }
        }
        return false
    }

    private func insert(_ row: ZoomReportRow, record: Int) throws -> Insertion {
        let key = row.participantKey
        if let existing = try Row.fetchOne(
            db.cachedStatement(
                sql: """
                    SELECT seq, left_s, file_id, record FROM zoom_report_intervals
                    WHERE meeting_id = ? AND ifnull(meeting_uuid, '') = ? AND participant_key = ? AND joined_s = ?
                    """
            ),
            arguments: [row.meetingID, row.meetingUUID ?? "", key, row.joined]
        ) {
            if existing["file_id"] == fileID && existing["record"] == record { return .ours }
            let left: Int64? = existing["left_s"]
            if left == row.left || row.left == nil { return .duplicate }
            guard left == nil else { return .conflict(existing["file_id"]) }
            // An earlier report exported while the participant was still in: this one completes it.
            try db.execute(
                sql: "UPDATE zoom_report_intervals SET left_s = ?, duration_seconds = ? WHERE seq = ?",
                arguments: [row.left, row.durationSeconds, existing["seq"] as Int64]
            )
            return .inserted
        }
        // Webhooks delivered this join whole already: the report adds nothing. Webhooks that say the same
        // person left at another time: the report is not taken over them.
        if row.meetingUUID == nil {
            if try webhooksHold(row, leaving: row.left) { return .duplicate }
            if row.left != nil, try webhooksHold(row, leaving: nil) { return .contradicts }
        }
        try db.cachedStatement(
            sql: """
                INSERT INTO zoom_report_intervals
                    (meeting_id, meeting_uuid, participant_key, joined_s, participant_id, participant_email,
                     participant_name, left_s, duration_seconds, meeting_start_s, meeting_end_s, source, visit_key,
                     file_id, record)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """
        ).execute(arguments: [
            row.meetingID, row.meetingUUID, key, row.joined, row.participantID, row.email, row.name, row.left,
            row.durationSeconds, row.meetingStart, row.meetingEnd, row.source.rawValue, row.meetingUUID, fileID, record,
        ])
        return .inserted
    }

    /// How far outside a webhook visit's first and last instants a report's join still belongs to it:
    /// a quarter of an hour around a visit that ended; half a day after one whose end was never seen.
    static let margin: Int64 = 900
    static let openEnded: Int64 = 43_200
    /// Report rows of no webhook visit more than this apart are two visits of their own.
    static let reportGap: Int64 = 1_800

    /// Resolves the report rows of `meeting` that name no visit to one (see the type's summary) and
    /// refreshes every visit that has or had any. Linear in the meeting's visits and report rows.
    func resolve(meeting: String) throws {
        let visits = try Row.fetchAll(
            db,
            sql: """
                SELECT visit_uuid, first_s, last_s, ended_at FROM zoom_visits
                WHERE meeting_id = ? AND first_s IS NOT NULL ORDER BY first_s, visit_uuid
                """,
            arguments: [meeting]
        )
        var windows: [(uuid: String, low: Int64, high: Int64)] = []
        for (index, visit) in visits.enumerated() {
            let first: Int64 = visit["first_s"]
            let last: Int64 = visit["last_s"]
            let ended = (visit["ended_at"] as String?).flatMap(RFC3339.epochMilliseconds).map(VisitTimeline.seconds)
            var high = ended.map { max($0, last) + Self.margin } ?? last + Self.openEnded
            if index + 1 < visits.count { high = min(high, (visits[index + 1]["first_s"] as Int64) - 1) }
            windows.append((visit["visit_uuid"], first - Self.margin, max(high, first)))
        }
        let rows = try Row.fetchAll(
            db,
            sql: """
                SELECT seq, joined_s, left_s, visit_key FROM zoom_report_intervals
                WHERE meeting_id = ? AND meeting_uuid IS NULL ORDER BY joined_s, seq
                """,
            arguments: [meeting]
        )
        var refresh = Set<String>()
        var clusterKey: String?
        var clusterEnd = Int64.min
        var window = 0
        for row in rows {
            let joined: Int64 = row["joined_s"]
            // Windows are ordered and do not overlap; rows come in join order.
            while window < windows.count && windows[window].high < joined { window += 1 }
            let key: String
            if window < windows.count && windows[window].low <= joined {
                key = windows[window].uuid
            } else {
                if clusterKey == nil || joined > clusterEnd + Self.reportGap {
                    clusterKey = "report:\(meeting):" + RFC3339.format(epochMilliseconds: joined * 1_000)
                    clusterEnd = joined
                }
                clusterEnd = max(clusterEnd, (row["left_s"] as Int64?) ?? joined)
                key = clusterKey!
            }
            refresh.insert(key)
            let old: String? = row["visit_key"]
            if old != key {
                if let old { refresh.insert(old) }
                try db.execute(
                    sql: "UPDATE zoom_report_intervals SET visit_key = ? WHERE seq = ?",
                    arguments: [key, row["seq"] as Int64]
                )
            }
        }
        // A report's own visit that no row points at any more goes.
        for stale in try String.fetchAll(
            db,
            sql: "SELECT visit_uuid FROM zoom_visits WHERE meeting_id = ? AND visit_uuid LIKE 'report:%'",
            arguments: [meeting]
        ) {
            refresh.insert(stale)
        }
        let writer = ZoomWriter(db: db, fileID: "")
        for key in refresh.sorted() { try writer.refreshVisit(key) }
    }

    /// Resolves and refreshes what the rows of file `fileID` touched (a streamed file's, at its ledger row).
    func refreshOfFile() throws {
        var touched = ZoomTouched()
        for row in try Row.fetchAll(
            db,
            sql: "SELECT DISTINCT meeting_id, meeting_uuid FROM zoom_report_intervals WHERE file_id = ?",
            arguments: [fileID]
        ) {
            if let uuid = row["meeting_uuid"] as String? {
                touched.visits.insert(uuid)
            } else {
                touched.meetings.insert(row["meeting_id"])
            }
        }
        try touched.refresh(db: db)
    }
}
