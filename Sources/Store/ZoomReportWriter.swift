import GRDB
package import JSONSchema
package import Kinds

/// What a transaction's Zoom writes touched: the visits to refresh, and per meeting the span of time
/// (seconds) in which its report rows are to be resolved to visits again — each once per transaction.
package struct ZoomTouched {
    // By bytes (ExactText): ids the database tells apart are refreshed apart.
    package var visits = Set<ExactText>()
    package var meetings: [ExactText: (low: Int64, high: Int64)] = [:]
    /// The stored events that the transaction's records met, parsed (by seq): each parsed once however
    /// many records meet it (a large stored event met by thousands cost their product: hostile review).
    var parsedEvents: [Int64: JSONValue?] = [:]

    package init(visits: Set<ExactText> = []) { self.visits = visits }

    package mutating func touch(meeting: String, from low: Int64, to high: Int64) {
        guard !meeting.isEmpty else { return }
        let old = meetings[ExactText(meeting)]
        meetings[ExactText(meeting)] = (min(old?.low ?? low, low), max(old?.high ?? high, high))
    }

    /// Refreshes every touched visit, then resolves the report rows of every touched meeting that has any,
    /// around what changed: the rows' joins, the refreshed visits' spans.
    func refresh(db: Database) throws {
        let writer = ZoomWriter(db: db, fileID: "")
        for uuid in visits.sorted() { try writer.refreshVisit(uuid.text) }
        var touched = self
        for uuid in visits {
            guard
                let visit = try Row.fetchOne(
                    db,
                    sql: "SELECT meeting_id, first_s, last_s FROM zoom_visits WHERE visit_uuid = ?",
                    arguments: [uuid.text]
                ), let first = visit["first_s"] as Int64?, let last = visit["last_s"] as Int64?
            else { continue }
            let meeting: String = visit["meeting_id"]
            let hasRows =
                try Bool.fetchOne(
                    db,
                    sql: "SELECT EXISTS (SELECT 1 FROM zoom_report_intervals WHERE meeting_id = ?)",
                    arguments: [meeting]
                ) ?? false
            if hasRows { touched.touch(meeting: meeting, from: first, to: last) }
        }
        let reports = ZoomReportWriter(db: db, fileID: "")
        for (meeting, span) in touched.meetings.sorted(by: { $0.key < $1.key }) {
            try reports.resolve(meeting: meeting.text, from: span.low, to: span.high)
        }
    }
}

/// Writes the rows of Zoom participants reports, deduplicated on their natural key (meeting, visit uuid
/// when the report names one, participant — id, else e-mail, else name — and join second), and resolves
/// them to visits: the webhook visit the report names, else the webhook visit of the meeting whose span
/// holds the join, else a visit of the report's own (`report:<meeting>:<first join>`). A row that a
/// webhook interval already holds whole is a duplicate; one that completes it (a missed leave) is stored
/// and merged; one that contradicts it (another leave) is rejected.
struct ZoomReportWriter {
    let db: Database
    let fileID: String

    func write(_ items: [Item<ZoomReportRow>], touched: inout ZoomTouched) throws -> FileReport {
        var tally = ReportTally()
        for item in items {
            switch item.result {
            case .failure(let problems):
                tally.failed(problems)
            case .success(var row):
                if let uuid = row.meetingUUID {
                    // A uuid is the report's word: never one of carespool's own visit keys, and without a
                    // meeting id only one the webhooks know (whose meeting it then is).
                    guard !uuid.hasPrefix("report:") else {
                        tally.reject(item, ReportTally.notAVisitUUID(uuid))
                        continue
                    }
                    if row.meetingID.isEmpty {
                        guard
                            let meeting = try String.fetchOne(
                                db.cachedStatement(
                                    sql: "SELECT meeting_id FROM zoom_events WHERE visit_uuid = ? LIMIT 1"
                                ),
                                arguments: [uuid]
                            )
                        else {
                            tally.rejectForNoMeeting(item)
                            continue
                        }
                        row.meetingID = meeting
                    }
                }
                let insertion = try insert(row, record: item.number)
                if tally.add(insertion, item, row, fileID: fileID) {
                    touched.touch(meeting: row.meetingID, from: row.joined, to: row.left ?? row.joined)
                }
            }
        }
        return tally.report
    }

    private typealias Insertion = ReportTally.Insertion

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
            guard left == nil else { return .conflict(existing["file_id"], record: existing["record"]) }
            // An earlier report exported while the participant was still in: this one completes it.
            // Its visit is resolved again, and so refreshed.
            try db.execute(
                sql:
                    "UPDATE zoom_report_intervals SET left_s = ?, duration_seconds = ?, visit_key = NULL WHERE seq = ?",
                arguments: [row.left, row.durationSeconds, existing["seq"] as Int64]
            )
            return .inserted
        }
        if let uuid = row.meetingUUID,
            let meeting = try String.fetchOne(
                db.cachedStatement(sql: "SELECT meeting_id FROM zoom_events WHERE visit_uuid = ? LIMIT 1"),
                arguments: [uuid]
            ), !sameText(meeting, row.meetingID)
        {
            return .otherMeeting(meeting)
        }
        // Webhooks delivered this join whole already: the report adds nothing. Webhooks that say the same
        // person left at another time: the report is not taken over them.
        if try webhooksHold(row, leaving: row.left) { return .duplicate }
        // To the minute, the same person may have joined twice in that minute: no contradiction then.
        if row.left != nil, !row.toTheMinute, try webhooksHold(row, leaving: nil) { return .contradicts }
        try db.cachedStatement(
            sql: """
                INSERT INTO zoom_report_intervals
                    (meeting_id, meeting_uuid, participant_key, joined_s, join_precision, participant_id,
                     participant_email, participant_name, left_s, duration_seconds, meeting_start_s, meeting_end_s,
                     source, visit_key, file_id, record)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """
        ).execute(arguments: [
            row.meetingID, row.meetingUUID, key, row.joined, row.toTheMinute ? 60 : 1, row.participantID, row.email,
            row.name, row.left, row.durationSeconds, row.meetingStart, row.meetingEnd, row.source.rawValue,
            nil, fileID, record,
        ])
        return .inserted
    }

    /// Whether a webhook interval of the row's meeting has the same person joining at the row's join —
    /// in the same second, or for a row given to the minute in the same minute — and leaving at `left`
    /// (in the same second or minute alike), or (nil) having left at all. The same person: by id when the
    /// row has one (a webhook interval always has), else by e-mail, else — only where the interval has no
    /// e-mail — by name. Each lookup is exact in a partial index to the minute and the person (migration
    /// v10): never a scan of that minute's joins.
    private func webhooksHold(_ row: ZoomReportRow, leaving left: Int64?) throws -> Bool {
        let minute = VisitTimeline.floor(row.joined, 60)
        // Parameters, never numbers in the text: one statement per shape, prepared once.
        var condition = row.toTheMinute ? "" : " AND joined_s = ?"
        var extra: [Int64] = row.toTheMinute ? [] : [row.joined]
        if let left {
            condition += row.toTheMinute ? " AND left_s / 60 = ?" : " AND left_s = ?"
            extra.append(row.toTheMinute ? VisitTimeline.floor(left, 60) : left)
        } else {
            condition += " AND left_s IS NOT NULL"
        }
        var queries: [(String, String)] = []
        if let id = row.participantID {
            queries.append(("participant_id = ?", id))
        } else if let email = row.email {
            queries.append(("participant_email IS NOT NULL AND lower(participant_email) = ?", email.lowercased()))
            if let name = row.name { queries.append(("participant_email IS NULL AND participant_name = ?", name)) }
        } else if let name = row.name {
            queries.append(("participant_name = ?", name))
        }
        for (who, value) in queries {
            var arguments: StatementArguments = [row.meetingID, minute, value]
            for number in extra { arguments += [number] }
            let found = try Bool.fetchOne(
                db.cachedStatement(
                    sql: """
                        SELECT EXISTS (SELECT 1 FROM zoom_visit_intervals
                        WHERE source = 'webhook' AND meeting_id = ? AND joined_m = ? AND \(who)\(condition))
                        """
                ),
                arguments: arguments
            )
            if found == true { return true }
        }
        return false
    }

    /// How far outside a webhook visit's first and last instants a report's join still belongs to it:
    /// a quarter of an hour around a visit that ended; half a day after one whose end was never seen.
    static let margin: Int64 = 900
    static let openEnded: Int64 = 43_200
    /// Report rows of no webhook visit more than this apart are two visits of their own.
    static let reportGap: Int64 = 1_800
    /// The most rows a visit of the report's own has (Zoom meetings hold up to 1,000 people).
    static let maxOwnRows = 20_000
    /// How far around what changed rows and visits are looked at: a visit or a run of rows that reaches
    /// further is resolved in parts (ARCHITECTURE.md, "Zoom participants reports").
    static let reach: Int64 = 2 * openEnded

    /// Resolves the report rows of `meeting` that join between `low` and `high` (give or take ``reach``)
    /// to visits (see the type's summary) and refreshes every visit that gained or lost rows. Linear in
    /// the rows and visits of that window, not in the meeting's whole history (a personal meeting id
    /// gathers thousands of visits).
    func resolve(meeting: String, from low: Int64, to high: Int64) throws {
        let (from, to) = ReportResolver.window(low, high)
        let visits = try Row.fetchAll(
            db.cachedStatement(
                sql: """
                    SELECT visit_uuid, first_s, last_s, ended_at FROM zoom_visits
                    WHERE meeting_id = ? AND first_s BETWEEN ? AND ? ORDER BY first_s, visit_uuid
                    """
            ),
            arguments: [meeting, from - Self.reach, to]
        ).map {
            (
                uuid: $0["visit_uuid"] as String, first: $0["first_s"] as Int64, last: $0["last_s"] as Int64,
                endedAt: $0["ended_at"] as String?
            )
        }
        // The run of the report's own rows that reaches into the window from before it.
        var before: ReportResolver.Run?
        if let row = try Row.fetchOne(
            db.cachedStatement(
                sql: """
                    SELECT visit_key FROM zoom_report_intervals
                    WHERE meeting_id = ? AND joined_s < ? ORDER BY joined_s DESC, seq DESC LIMIT 1
                    """
            ),
            arguments: [meeting, from]
        ), let key = row["visit_key"] as String?, key.hasPrefix("report:"),
            let run = try Row.fetchOne(
                db.cachedStatement(
                    sql: """
                        SELECT min(joined_s) AS start, max(ifnull(left_s, joined_s)) AS end, count(*) AS rows
                        FROM zoom_report_intervals WHERE visit_key = ? AND joined_s < ?
                        """
                ),
                arguments: [key, from]
            ), let start = run["start"] as Int64?
        {
            before = ReportResolver.Run(key: key, start: start, end: run["end"], rows: run["rows"])
        }
        var resolver = ReportResolver(meeting: meeting, visits: visits, before: before)
        // Read through a cursor, the changes kept compact and written after it (a window of 130,000 rows held
        // as GRDB rows took tens of MB; a table is not written while a statement reads it).
        var changes: [(seq: Int64, key: String)] = []
        let rows = try Row.fetchCursor(
            db.cachedStatement(
                sql: """
                    SELECT seq, joined_s, left_s, visit_key, meeting_uuid FROM zoom_report_intervals
                    WHERE meeting_id = ? AND joined_s BETWEEN ? AND ? ORDER BY joined_s, seq
                    """
            ),
            arguments: [meeting, from, to]
        )
        while let row = try rows.next() {
            if let key = resolver.key(
                joined: row["joined_s"],
                left: row["left_s"],
                meetingUUID: row["meeting_uuid"],
                was: row["visit_key"]
            ) {
                changes.append((row["seq"], key))
            }
        }
        for change in changes {
            try db.cachedStatement(sql: "UPDATE zoom_report_intervals SET visit_key = ? WHERE seq = ?")
                .execute(arguments: [change.key, change.seq])
        }
        // A visit that lost all its rows goes (refreshVisit deletes a visit with neither events nor rows).
        let writer = ZoomWriter(db: db, fileID: "")
        for key in resolver.refresh.sorted() { try writer.refreshVisit(key.text) }
    }

    /// Resolves and refreshes what the rows of file `fileID` touched (a streamed file's, at its ledger row).
    func refreshOfFile() throws {
        var touched = ZoomTouched()
        for row in try Row.fetchAll(
            db,
            sql: """
                SELECT meeting_id, meeting_uuid, min(joined_s) AS low, max(ifnull(left_s, joined_s)) AS high
                FROM zoom_report_intervals WHERE file_id = ? GROUP BY meeting_id, meeting_uuid
                """,
            arguments: [fileID]
        ) {
            touched.touch(meeting: row["meeting_id"], from: row["low"], to: row["high"])
        }
        try touched.refresh(db: db)
    }
}

/// Which visit each report row of a meeting belongs to, around what changed (ZoomReportWriter's
/// `resolve`; both stores feed it the same rows): the webhook visit the row's uuid names, else the webhook
/// visit whose window holds its join, else a visit of the report's own. The rows come in join order; each
/// row's new key is returned when it differs from the one it has, and both keys are to be refreshed.
package struct ReportResolver {
    /// A run of the report's own rows: its key, first join, last instant and rows.
    package struct Run {
        var key: String
        var start: Int64
        var end: Int64
        var rows: Int

        package init(key: String, start: Int64, end: Int64, rows: Int) {
            self.key = key
            self.start = start
            self.end = end
            self.rows = rows
        }
    }

    /// How far before the window's first join visits are looked for (``ZoomReportWriter/reach``).
    package static let reach = ZoomReportWriter.reach

    /// The joins looked at around `low`…`high`; visits are looked for from `from - reach`.
    package static func window(_ low: Int64, _ high: Int64) -> (from: Int64, to: Int64) {
        (low - ZoomReportWriter.reach, high + ZoomReportWriter.reach)
    }

    private let meeting: String
    private var windows: [(uuid: String, low: Int64, high: Int64)] = []
    private let webhookVisits: Set<ExactText>
    private var cluster: Run?
    private var clusterPart = 0
    private var window = 0
    /// The visits that gained or lost rows.
    package private(set) var refresh = Set<ExactText>()

    /// - Parameters:
    ///   - visits: the meeting's webhook visits from `from - reach` to `to`, by first instant then uuid.
    ///   - before: the run of the report's own rows that reaches into the window from before it, which
    ///     goes on in it (else a report of today would split yesterday's visit, depending on what came first).
    package init(
        meeting: String,
        visits: [(uuid: String, first: Int64, last: Int64, endedAt: String?)],
        before: Run?
    ) {
        self.meeting = meeting
        for (index, visit) in visits.enumerated() {
            let ended = visit.endedAt.flatMap(RFC3339.epochMilliseconds).map { VisitTimeline.floor($0, 1_000) }
            var high =
                ended.map { max($0, visit.last) + ZoomReportWriter.margin } ?? visit.last + ZoomReportWriter.openEnded
            if index + 1 < visits.count { high = min(high, visits[index + 1].first - 1) }
            windows.append((visit.uuid, visit.first - ZoomReportWriter.margin, max(high, visit.first)))
        }
        webhookVisits = Set(windows.map { ExactText($0.uuid) })
        if let before {
            cluster = before
            clusterPart = before.key.split(separator: "+").last.flatMap { Int($0) } ?? 0
        }
    }

    /// The key of the next row (in join order): nil when it keeps the one it has.
    package mutating func key(joined: Int64, left: Int64?, meetingUUID: String?, was old: String?) -> String? {
        // Windows are ordered and do not overlap; rows come in join order.
        while window < windows.count && windows[window].high < joined { window += 1 }
        let key: String
        if let uuid = meetingUUID, webhookVisits.contains(ExactText(uuid)) {
            // The visit the report names, where the webhooks have it (else the uuid is only a hint).
            key = uuid
        } else if window < windows.count && windows[window].low <= joined {
            key = windows[window].uuid
        } else {
            // A visit of the report's own ends at a gap, after a day (no Zoom meeting lasts longer), or at
            // `maxOwnRows` rows: a hostile run of rows never makes one visit that memory cannot hold.
            if cluster == nil || joined > cluster!.end + ZoomReportWriter.reportGap
                || joined > cluster!.start + 86_400 || cluster!.rows >= ZoomReportWriter.maxOwnRows
            {
                // Split at `maxOwnRows` within one second, the next part is told apart by its count.
                let part =
                    cluster.map { joined == $0.start && $0.rows >= ZoomReportWriter.maxOwnRows } == true
                    ? clusterPart + 1 : 0
                cluster = Run(
                    key: "report:\(meeting):" + RFC3339.format(epochMilliseconds: joined * 1_000)
                        + (part > 0 ? "+\(part)" : ""),
                    start: joined,
                    end: joined,
                    rows: 0
                )
                clusterPart = part
            }
            cluster!.rows += 1
            cluster!.end = max(cluster!.end, left ?? joined)
            key = cluster!.key
        }
        guard !sameText(old, key) else { return nil }
        refresh.insert(ExactText(key))
        if let old { refresh.insert(ExactText(old)) }
        return key
    }
}

/// A report file's verdicts, row by row, with their messages: both stores' report writers count here.
package struct ReportTally {
    /// What storing one row came to.
    package enum Insertion {
        case inserted, duplicate
        /// This very row, stored by an earlier chunk of this file before a crash.
        case ours
        /// Another leave than the stored row's (its file and record).
        case conflict(String, record: Int)
        /// The webhooks have this join with another leave.
        case contradicts
        /// The visit uuid the row names is another meeting's.
        case otherMeeting(String)
    }

    private var stored = 0
    private var duplicates = 0
    private var rejected = 0
    private var errors: [RecordProblem] = []

    package init() {}

    package static func notAVisitUUID(_ uuid: String) -> String { "meeting_uuid \"\(uuid)\" is not a Zoom visit uuid" }

    /// A row the reader refused.
    package mutating func failed(_ problems: Problems) {
        rejected += 1
        problems.append(to: &errors)
    }

    package mutating func reject(_ item: Item<ZoomReportRow>, _ message: String) {
        rejected += 1
        errors.append(RecordProblem(record: item.number, line: item.line, pointer: nil, message: message))
    }

    /// A row whose page names no meeting and whose uuid the webhooks do not know.
    package mutating func rejectForNoMeeting(_ item: Item<ZoomReportRow>) {
        reject(
            item,
            "the page names no meeting_id, and its meeting_uuid is no visit the webhooks have: add meeting_id "
                + "beside participants"
        )
    }

    /// Counts `insertion` of `item` (`row` as stored, of file `fileID`); true when it changed what the
    /// timelines hold (its meeting is to be resolved again).
    package mutating func add(_ insertion: Insertion, _ item: Item<ZoomReportRow>, _ row: ZoomReportRow, fileID: String)
        -> Bool
    {
        switch insertion {
        case .inserted:
            stored += 1
            return true
        case .ours:
            stored += 1
        case .duplicate:
            duplicates += 1
        case .conflict(let earlier, let record):
            reject(
                item,
                (sameText(earlier, fileID)
                    ? "conflicts with record \(record) of this file"
                    : "conflicts with the row stored from file \(earlier)")
                    + " for the same meeting, participant and join time: a different leave time"
            )
        case .contradicts:
            reject(
                item,
                "conflicts with the webhooks: they have this participant joining at this time and leaving at "
                    + "another; not taken over them"
            )
        case .otherMeeting(let meeting):
            reject(
                item,
                "meeting_uuid is a visit of meeting \(meeting) (its webhooks say so), not of meeting \(row.meetingID)"
            )
        }
        return false
    }

    package var report: FileReport {
        FileReport(
            outcome: FileReport.outcome(stored: stored, duplicates: duplicates, rejected: rejected),
            stored: stored,
            duplicates: duplicates,
            rejected: rejected,
            errors: errors
        )
    }
}
