import JSONSchema
import Kinds
import Logging
import PostgresNIO
import Store

/// Zoom participants reports in PostgreSQL: ZoomReportWriter's rules, row by row in record order (a row's
/// verdict depends on the rows and webhook intervals before it: a repeat, a later leave completing an
/// open row, a contradiction of the webhooks), and the resolution of a meeting's rows to visits by the
/// same ``ReportResolver``.
///
/// Across hosts, every Zoom write of a meeting — webhook events, exports, reports — holds the meeting's
/// advisory lock for its transaction (``lockMeetings(_:_:_:)``, taken in one order after the byte locks),
/// so a meeting's rows, visits and their spans change under one writer at a time: the resolution of its
/// rows to visits reads what the last transaction left, as on one host.
enum ZoomReportsInPostgres {
    /// The locks of `meetings` (``SiteDatabase/lockSlots(_:space:_:_:)``: 256 slots, ascending).
    static func lockMeetings(_ meetings: Set<ExactText>, _ connection: PostgresConnection, _ logger: Logger)
        async throws
    {
        try await SiteDatabase.lockSlots(meetings.map(\.text), space: 2, connection, logger)
    }

    /// The meetings a batch's or a chunk's Zoom records belong to: each event's, each report row's (a row
    /// that names only a visit uuid: the meeting the webhooks give that visit), and those of large files'
    /// stored records (`files`: their ids).
    static func meetings(
        events: [ZoomEvent],
        rows: [ZoomReportRow],
        files: [String],
        _ connection: PostgresConnection,
        _ logger: Logger
    ) async throws -> Set<ExactText> {
        var meetings = Set(events.map { ExactText($0.meetingID) })
        var uuids: [String] = []
        for row in rows {
            if !row.meetingID.isEmpty {
                meetings.insert(ExactText(row.meetingID))
            } else if let uuid = row.meetingUUID {
                uuids.append(uuid)
            }
        }
        if !uuids.isEmpty {
            let found = try await connection.query(
                "SELECT DISTINCT meeting_id FROM zoom_events WHERE visit_uuid = ANY(\(uuids)::text[])",
                logger: logger
            )
            for try await meeting in found.decode(String.self) { meetings.insert(ExactText(meeting)) }
        }
        if !files.isEmpty {
            let found = try await connection.query(
                """
                SELECT meeting_id FROM zoom_events WHERE file_id = ANY(\(files)::text[])
                UNION SELECT meeting_id FROM zoom_report_intervals WHERE file_id = ANY(\(files)::text[])
                """,
                logger: logger
            )
            for try await meeting in found.decode(String.self) { meetings.insert(ExactText(meeting)) }
        }
        return meetings
    }

    /// One report file's rows (or a large one's chunk), judged as ZoomReportWriter judges them.
    static func write(
        _ items: [Item<ZoomReportRow>],
        fileID: String,
        touched: inout ZoomTouched,
        _ connection: PostgresConnection,
        _ logger: Logger
    ) async throws -> FileReport {
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
                        guard let meeting = try await meetingOfVisit(uuid, connection, logger) else {
                            tally.rejectForNoMeeting(item)
                            continue
                        }
                        row.meetingID = meeting
                    }
                }
                let insertion = try await insert(row, record: item.number, fileID: fileID, connection, logger)
                if tally.add(insertion, item, row, fileID: fileID) {
                    touched.touch(meeting: row.meetingID, from: row.joined, to: row.left ?? row.joined)
                }
            }
        }
        return tally.report
    }

    private typealias Insertion = ReportTally.Insertion

    private static func meetingOfVisit(_ uuid: String, _ connection: PostgresConnection, _ logger: Logger)
        async throws -> String?
    {
        let rows = try await connection.query(
            "SELECT meeting_id FROM zoom_events WHERE visit_uuid = \(uuid) LIMIT 1",
            logger: logger
        )
        for try await meeting in rows.decode(String.self) { return meeting }
        return nil
    }

    private static func insert(
        _ row: ZoomReportRow,
        record: Int,
        fileID: String,
        _ connection: PostgresConnection,
        _ logger: Logger
    ) async throws -> Insertion {
        let key = row.participantKey
        let existing = try await connection.query(
            """
            SELECT seq, left_s, file_id, record FROM zoom_report_intervals
            WHERE meeting_id = \(row.meetingID) AND coalesce(meeting_uuid, '') = \(row.meetingUUID ?? "")
              AND participant_key = \(key) AND joined_s = \(row.joined)
            """,
            logger: logger
        )
        var found: (seq: Int64, left: Int64?, file: String, record: Int64)?
        for try await (seq, left, file, number) in existing.decode((Int64, Int64?, String, Int64).self) {
            found = (seq, left, file, number)
        }
        if let found {
            if sameText(found.file, fileID) && found.record == Int64(record) { return .ours }
            if found.left == row.left || row.left == nil { return .duplicate }
            guard found.left == nil else { return .conflict(found.file, record: Int(found.record)) }
            // An earlier report exported while the participant was still in: this one completes it. Its
            // visit is resolved again, and so refreshed.
            try await connection.query(
                """
                UPDATE zoom_report_intervals
                SET left_s = \(row.left), duration_seconds = \(row.durationSeconds.map(Int64.init)), visit_key = NULL
                WHERE seq = \(found.seq)
                """,
                logger: logger
            )
            return .inserted
        }
        if let uuid = row.meetingUUID, let meeting = try await meetingOfVisit(uuid, connection, logger),
            !sameText(meeting, row.meetingID)
        {
            return .otherMeeting(meeting)
        }
        // Webhooks delivered this join whole already: the report adds nothing. Webhooks that say the same
        // person left at another time: the report is not taken over them.
        if try await webhooksHold(row, leaving: row.left, connection, logger) { return .duplicate }
        // To the minute, the same person may have joined twice in that minute: no contradiction then.
        if row.left != nil, !row.toTheMinute, try await webhooksHold(row, leaving: nil, connection, logger) {
            return .contradicts
        }
        try await connection.query(
            """
            INSERT INTO zoom_report_intervals
                (meeting_id, meeting_uuid, participant_key, joined_s, join_precision, participant_id,
                 participant_email, participant_name, left_s, duration_seconds, meeting_start_s, meeting_end_s,
                 source, visit_key, file_id, record)
            VALUES (\(row.meetingID), \(row.meetingUUID), \(key), \(row.joined), \(Int64(row.toTheMinute ? 60 : 1)),
                    \(row.participantID), \(row.email), \(row.name), \(row.left), \(row.durationSeconds.map(Int64.init)),
                    \(row.meetingStart), \(row.meetingEnd), \(row.source.rawValue), NULL, \(fileID), \(Int64(record)))
            """,
            logger: logger
        )
        return .inserted
    }

    /// ZoomReportWriter's `webhooksHold`: whether a webhook interval of the row's meeting has the same
    /// person joining at the row's join (second, or minute for a row given to the minute) and leaving at
    /// `left` (alike), or (nil) having left at all — each look-up exact in a partial index.
    private static func webhooksHold(
        _ row: ZoomReportRow,
        leaving left: Int64?,
        _ connection: PostgresConnection,
        _ logger: Logger
    ) async throws -> Bool {
        let minute = VisitTimeline.floor(row.joined, 60)
        // NULL where the row does not narrow by it: to the minute, no join second; no leave, any leave.
        let second: Int64? = row.toTheMinute ? nil : row.joined
        let leftSecond: Int64? = row.toTheMinute ? nil : left
        let leftMinute: Int64? = row.toTheMinute ? left.map { VisitTimeline.floor($0, 60) } : nil
        let anyLeave = left == nil
        // Each person's shape its own statement (`who` is one of the constant texts below), so that each
        // uses its partial index.
        func holds(_ who: String, _ value: String) async throws -> Bool {
            let rows = try await connection.query(
                """
                SELECT EXISTS (SELECT 1 FROM zoom_visit_intervals
                WHERE source = 'webhook' AND meeting_id = \(row.meetingID) AND joined_m = \(minute)
                  AND \(unescaped: who) = \(value)
                  AND (\(second)::int8 IS NULL OR joined_s = \(second))
                  AND (\(anyLeave) AND left_s IS NOT NULL OR left_s = \(leftSecond) OR left_s / 60 = \(leftMinute)))
                """,
                logger: logger
            )
            for try await found in rows.decode(Bool.self) { return found }
            return false
        }
        if let id = row.participantID { return try await holds("participant_id", id) }
        if let email = row.email {
            if try await holds("participant_email IS NOT NULL AND lower(participant_email)", email.lowercased()) {
                return true
            }
            guard let name = row.name else { return false }
            return try await holds("participant_email IS NULL AND participant_name", name)
        }
        guard let name = row.name else { return false }
        return try await holds("participant_name", name)
    }

    /// What the report rows of files `ids` touched (large files', resolved with their verdicts).
    static func touched(ofFiles ids: [String], _ connection: PostgresConnection, _ logger: Logger) async throws
        -> ZoomTouched
    {
        var touched = ZoomTouched()
        guard !ids.isEmpty else { return touched }
        let rows = try await connection.query(
            """
            SELECT meeting_id, min(joined_s), max(coalesce(left_s, joined_s)) FROM zoom_report_intervals
            WHERE file_id = ANY(\(ids)::text[]) GROUP BY meeting_id, meeting_uuid
            """,
            logger: logger
        )
        for try await (meeting, low, high) in rows.decode((String, Int64, Int64).self) {
            touched.touch(meeting: meeting, from: low, to: high)
        }
        return touched
    }

    /// ZoomTouched's `refresh`: every touched visit refreshed, then the report rows of every touched
    /// meeting that has any resolved to visits again around what changed.
    static func refresh(_ touched: ZoomTouched, _ connection: PostgresConnection, _ logger: Logger) async throws {
        try await ZoomInPostgres.refreshVisits(touched.visits, connection, logger)
        var touched = touched
        if !touched.visits.isEmpty {
            let uuids = touched.visits.map(\.text)
            let spans = try await connection.query(
                """
                SELECT v.meeting_id, v.first_s, v.last_s FROM zoom_visits v
                WHERE v.visit_uuid = ANY(\(uuids)::text[]) AND v.first_s IS NOT NULL AND v.last_s IS NOT NULL
                  AND EXISTS (SELECT 1 FROM zoom_report_intervals r WHERE r.meeting_id = v.meeting_id)
                """,
                logger: logger
            )
            for try await (meeting, first, last) in spans.decode((String, Int64, Int64).self) {
                touched.touch(meeting: meeting, from: first, to: last)
            }
        }
        for (meeting, span) in touched.meetings.sorted(by: { $0.key < $1.key }) {
            try await resolve(meeting: meeting.text, from: span.low, to: span.high, connection, logger)
        }
    }

    /// ZoomReportWriter's `resolve`: the meeting's rows around `low`…`high` given to the same
    /// ``ReportResolver``, their new keys written in one statement, the visits that gained or lost rows
    /// refreshed.
    static func resolve(
        meeting: String,
        from low: Int64,
        to high: Int64,
        _ connection: PostgresConnection,
        _ logger: Logger
    ) async throws {
        let (from, to) = ReportResolver.window(low, high)
        var visits: [(uuid: String, first: Int64, last: Int64, endedAt: String?)] = []
        // Ordered as SQLite orders them (uuids by bytes).
        let found = try await connection.query(
            """
            SELECT visit_uuid, first_s, last_s, ended_at FROM zoom_visits
            WHERE meeting_id = \(meeting) AND first_s BETWEEN \(from - ReportResolver.reach) AND \(to)
            ORDER BY first_s, visit_uuid COLLATE "C"
            """,
            logger: logger
        )
        for try await visit in found.decode((String, Int64, Int64, String?).self) { visits.append(visit) }
        var before: ReportResolver.Run?
        var lastKey: String?
        for try await key in try await connection.query(
            """
            SELECT visit_key FROM zoom_report_intervals
            WHERE meeting_id = \(meeting) AND joined_s < \(from) ORDER BY joined_s DESC, seq DESC LIMIT 1
            """,
            logger: logger
        ).decode(String?.self) {
            lastKey = key
        }
        if let key = lastKey, key.hasPrefix("report:") {
            for try await (start, end, rows) in try await connection.query(
                """
                SELECT min(joined_s), max(coalesce(left_s, joined_s)), count(*)::int8 FROM zoom_report_intervals
                WHERE visit_key = \(key) AND joined_s < \(from)
                """,
                logger: logger
            ).decode((Int64?, Int64?, Int).self) {
                if let start, let end { before = ReportResolver.Run(key: key, start: start, end: end, rows: rows) }
            }
        }
        var resolver = ReportResolver(meeting: meeting, visits: visits, before: before)
        var seqs: [Int64] = []
        var keys: [String] = []
        let rows = try await connection.query(
            """
            SELECT seq, joined_s, left_s, visit_key, meeting_uuid FROM zoom_report_intervals
            WHERE meeting_id = \(meeting) AND joined_s BETWEEN \(from) AND \(to) ORDER BY joined_s, seq
            """,
            logger: logger
        )
        for try await (seq, joined, left, old, uuid) in rows.decode((Int64, Int64, Int64?, String?, String?).self) {
            if let key = resolver.key(joined: joined, left: left, meetingUUID: uuid, was: old) {
                seqs.append(seq)
                keys.append(key)
            }
        }
        if !seqs.isEmpty {
            try await connection.query(
                """
                UPDATE zoom_report_intervals r SET visit_key = c.key
                FROM unnest(\(seqs)::int8[], \(keys)::text[]) AS c (seq, key) WHERE r.seq = c.seq
                """,
                logger: logger
            )
        }
        // A visit that lost all its rows goes (refreshVisits deletes a visit with neither events nor rows).
        try await ZoomInPostgres.refreshVisits(resolver.refresh, connection, logger)
    }
}
