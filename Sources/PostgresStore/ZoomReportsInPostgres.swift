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

    /// One report file's rows (or a large one's chunk), judged as ZoomReportWriter judges them, row by row in
    /// record order, but read and written set by set: what the rows need from the database (the meetings
    /// of their visit uuids, the stored rows of their keys, the webhook intervals of their people in their
    /// minutes) is read in a few statements first, each row is then judged in memory against that and the
    /// rows before it, and the new rows and the completed ones are written in one statement each. The
    /// meeting's lock (taken by the caller) keeps all of it from changing under the batch.
    static func write(
        _ items: [Item<ZoomReportRow>],
        fileID: String,
        touched: inout ZoomTouched,
        _ connection: PostgresConnection,
        _ logger: Logger
    ) async throws -> FileReport {
        var uuids = Set<ExactText>()
        for item in items {
            if case .success(let row) = item.result, let uuid = row.meetingUUID, !uuid.hasPrefix("report:") {
                uuids.insert(ExactText(uuid))
            }
        }
        let meetingOfVisit = try await meetingsOfVisits(uuids, connection, logger)
        // The rows as they will be judged (their meeting filled in from their uuid), or nil: rejected first.
        let rows: [ZoomReportRow?] = items.map { item in
            guard case .success(var row) = item.result else { return nil }
            if let uuid = row.meetingUUID {
                if uuid.hasPrefix("report:") { return nil }
                if row.meetingID.isEmpty {
                    guard let meeting = meetingOfVisit[ExactText(uuid)] else { return nil }
                    row.meetingID = meeting
                }
            }
            return row
        }
        let judged = rows.compactMap { $0 }
        var known = try await storedRows(judged, connection, logger)
        let webhooks = try await WebhookSightings.read(judged, connection, logger)

        var tally = ReportTally()
        var inserts: [(row: ZoomReportRow, record: Int)] = []
        var completions: [Int64: (left: Int64?, duration: Int?)] = [:]
        for (item, row) in zip(items, rows) {
            guard let row else {
                switch item.result {
                case .failure(let problems): tally.failed(problems)
                case .success(let row):
                    if let uuid = row.meetingUUID, uuid.hasPrefix("report:") {
                        tally.reject(item, ReportTally.notAVisitUUID(uuid))
                    } else {
                        tally.rejectForNoMeeting(item)
                    }
                }
                continue
            }
            let insertion: Insertion
            let key = StoredRow.Key(row)
            if var found = known[key] {
                if sameText(found.file, fileID) && found.record == Int64(item.number) {
                    insertion = .ours
                } else if found.left == row.left || row.left == nil {
                    insertion = .duplicate
                } else if found.left != nil {
                    insertion = .conflict(found.file, record: Int(found.record))
                } else {
                    // An earlier report exported while the participant was still in: this one completes it. Its
                    // visit is resolved again (its key cleared), and so refreshed.
                    found.left = row.left
                    switch found.place {
                    case .stored(let seq): completions[seq] = (row.left, row.durationSeconds)
                    case .new(let index):
                        inserts[index].row.left = row.left
                        inserts[index].row.durationSeconds = row.durationSeconds
                    }
                    known[key] = found
                    insertion = .inserted
                }
            } else if let uuid = row.meetingUUID, let meeting = meetingOfVisit[ExactText(uuid)],
                !sameText(meeting, row.meetingID)
            {
                insertion = .otherMeeting(meeting)
            } else if webhooks.hold(row, leaving: row.left) {
                // Webhooks delivered this join whole already: the report adds nothing.
                insertion = .duplicate
            } else if row.left != nil, !row.toTheMinute, webhooks.hold(row, leaving: nil) {
                // Webhooks that say the same person left at another time: the report is not taken over them.
                // (To the minute, the same person may have joined twice in that minute: no contradiction.)
                insertion = .contradicts
            } else {
                known[key] = StoredRow(
                    place: .new(inserts.count),
                    left: row.left,
                    file: fileID,
                    record: Int64(item.number)
                )
                inserts.append((row, item.number))
                insertion = .inserted
            }
            if tally.add(insertion, item, row, fileID: fileID) {
                touched.touch(meeting: row.meetingID, from: row.joined, to: row.left ?? row.joined)
            }
        }
        try await complete(completions, connection, logger)
        try await insert(inserts, fileID: fileID, connection, logger)
        return tally.report
    }

    private typealias Insertion = ReportTally.Insertion

    /// The meeting of each of `uuids` the webhooks know: that of its first stored event, as SQLite's
    /// look-up by the visit index finds it.
    private static func meetingsOfVisits(_ uuids: Set<ExactText>, _ connection: PostgresConnection, _ logger: Logger)
        async throws -> [ExactText: String]
    {
        var meetings: [ExactText: String] = [:]
        guard !uuids.isEmpty else { return meetings }
        let found = try await connection.query(
            """
            SELECT DISTINCT ON (visit_uuid) visit_uuid, meeting_id FROM zoom_events
            WHERE visit_uuid = ANY(\(uuids.map(\.text))::text[]) ORDER BY visit_uuid, seq
            """,
            logger: logger
        )
        for try await (uuid, meeting) in found.decode((String, String).self) { meetings[ExactText(uuid)] = meeting }
        return meetings
    }

    /// A report row under its natural key (meeting, visit uuid, participant, join second): stored before
    /// this batch, or new in it.
    struct StoredRow {
        struct Key: Hashable {
            let meeting: ExactText
            let uuid: ExactText
            let participant: ExactText
            let joined: Int64

            init(_ row: ZoomReportRow) {
                self.init(row.meetingID, row.meetingUUID ?? "", row.participantKey, row.joined)
            }

            init(_ meeting: String, _ uuid: String, _ participant: String, _ joined: Int64) {
                self.meeting = ExactText(meeting)
                self.uuid = ExactText(uuid)
                self.participant = ExactText(participant)
                self.joined = joined
            }
        }

        enum Place {
            case stored(seq: Int64)
            case new(Int)  // index in the batch's inserts
        }

        var place: Place
        var left: Int64?
        let file: String
        let record: Int64
    }

    /// The stored rows under the natural keys of `rows`, in one look-up by the key's index. Each key is
    /// found as the first row at or after it in the key's order (`LIMIT 1`, a row comparison), a shape only
    /// the key's index answers: with equalities, a planner whose statistics predate a burst of rows at one
    /// join second chose `zoom_report_by_join` and scanned every row of that second for each key — seconds
    /// a chunk, under the meeting's lock (hostile review: 60,000 joins at 09:00:00).
    static func storedRows(_ rows: [ZoomReportRow], _ connection: PostgresConnection, _ logger: Logger)
        async throws -> [StoredRow.Key: StoredRow]
    {
        var stored: [StoredRow.Key: StoredRow] = [:]
        guard !rows.isEmpty else { return stored }
        let found = try await connection.query(storedRowsQuery(rows), logger: logger)
        for try await (seq, meeting, uuid, participant, joined, left, file, record) in found.decode(
            (Int64, String, String, String, Int64, Int64?, String, Int64).self
        ) {
            stored[StoredRow.Key(meeting, uuid, participant, joined)] = StoredRow(
                place: .stored(seq: seq),
                left: left,
                file: file,
                record: record
            )
        }
        return stored
    }

    /// ``storedRows(_:_:_:)``'s statement (its plan is tested).
    static func storedRowsQuery(_ rows: [ZoomReportRow]) -> PostgresQuery {
        """
        SELECT r.seq, r.meeting_id, coalesce(r.meeting_uuid, ''), r.participant_key, r.joined_s, r.left_s,
               r.file_id, r.record
        FROM (SELECT DISTINCT * FROM unnest(\(rows.map(\.meetingID))::text[],
                                            \(rows.map { $0.meetingUUID ?? "" })::text[],
                                            \(rows.map(\.participantKey))::text[], \(rows.map(\.joined))::int8[])
                                     AS u (meeting_id, meeting_uuid, participant_key, joined_s)) c
        CROSS JOIN LATERAL (
            SELECT * FROM zoom_report_intervals r
            WHERE (r.meeting_id, coalesce(r.meeting_uuid, ''), r.participant_key, r.joined_s)
                  >= (c.meeting_id, c.meeting_uuid, c.participant_key, c.joined_s)
            ORDER BY r.meeting_id, coalesce(r.meeting_uuid, ''), r.participant_key, r.joined_s
            LIMIT 1
        ) r
        WHERE r.meeting_id = c.meeting_id AND coalesce(r.meeting_uuid, '') = c.meeting_uuid
          AND r.participant_key = c.participant_key AND r.joined_s = c.joined_s
        """
    }

    /// Stored rows completed by a later leave, in one statement (in seq order).
    private static func complete(
        _ completions: [Int64: (left: Int64?, duration: Int?)],
        _ connection: PostgresConnection,
        _ logger: Logger
    ) async throws {
        guard !completions.isEmpty else { return }
        let ordered = completions.sorted { $0.key < $1.key }
        try await connection.query(
            """
            UPDATE zoom_report_intervals r
            SET left_s = c.left_s, duration_seconds = CASE WHEN c.has_duration THEN c.duration END, visit_key = NULL
            FROM unnest(\(ordered.map(\.key))::int8[], \(ordered.map { $0.value.left ?? 0 })::int8[],
                        \(ordered.map { Int64($0.value.duration ?? 0) })::int8[],
                        \(ordered.map { $0.value.duration != nil })::bool[]) AS c (seq, left_s, duration, has_duration)
            WHERE r.seq = c.seq
            """,
            logger: logger
        )
    }

    private enum Null: Int64 {
        case uuid = 1, participant = 2, email = 4, name = 8, left = 16, duration = 32, start = 64, end = 128
    }

    /// The batch's new rows, in record order, in one statement.
    private static func insert(
        _ rows: [(row: ZoomReportRow, record: Int)],
        fileID: String,
        _ connection: PostgresConnection,
        _ logger: Logger
    ) async throws {
        guard !rows.isEmpty else { return }
        let nulls = rows.map { (row, _) in
            var bits: Int64 = 0
            if row.meetingUUID == nil { bits |= Null.uuid.rawValue }
            if row.participantID == nil { bits |= Null.participant.rawValue }
            if row.email == nil { bits |= Null.email.rawValue }
            if row.name == nil { bits |= Null.name.rawValue }
            if row.left == nil { bits |= Null.left.rawValue }
            if row.durationSeconds == nil { bits |= Null.duration.rawValue }
            if row.meetingStart == nil { bits |= Null.start.rawValue }
            if row.meetingEnd == nil { bits |= Null.end.rawValue }
            return bits
        }
        let all = rows.map(\.row)
        try await connection.query(
            """
            INSERT INTO zoom_report_intervals
                (meeting_id, meeting_uuid, participant_key, joined_s, join_precision, participant_id,
                 participant_email, participant_name, left_s, duration_seconds, meeting_start_s, meeting_end_s,
                 source, visit_key, file_id, record)
            SELECT c.meeting_id, CASE WHEN c.nulls & 1 = 0 THEN c.meeting_uuid END, c.participant_key, c.joined_s,
                   c.join_precision, CASE WHEN c.nulls & 2 = 0 THEN c.participant_id END,
                   CASE WHEN c.nulls & 4 = 0 THEN c.participant_email END,
                   CASE WHEN c.nulls & 8 = 0 THEN c.participant_name END, CASE WHEN c.nulls & 16 = 0 THEN c.left_s END,
                   CASE WHEN c.nulls & 32 = 0 THEN c.duration_seconds END,
                   CASE WHEN c.nulls & 64 = 0 THEN c.meeting_start_s END,
                   CASE WHEN c.nulls & 128 = 0 THEN c.meeting_end_s END, c.source, NULL, \(fileID)::text, c.record
            FROM unnest(\(all.map(\.meetingID))::text[], \(all.map { $0.meetingUUID ?? "" })::text[],
                        \(all.map(\.participantKey))::text[], \(all.map(\.joined))::int8[],
                        \(all.map { Int64($0.toTheMinute ? 60 : 1) })::int8[], \(all.map { $0.participantID ?? "" })::text[],
                        \(all.map { $0.email ?? "" })::text[], \(all.map { $0.name ?? "" })::text[],
                        \(all.map { $0.left ?? 0 })::int8[], \(all.map { Int64($0.durationSeconds ?? 0) })::int8[],
                        \(all.map { $0.meetingStart ?? 0 })::int8[], \(all.map { $0.meetingEnd ?? 0 })::int8[],
                        \(all.map(\.source.rawValue))::text[], \(rows.map { Int64($0.record) })::int8[], \(nulls)::int8[])
                 WITH ORDINALITY AS c (meeting_id, meeting_uuid, participant_key, joined_s, join_precision,
                                       participant_id, participant_email, participant_name, left_s, duration_seconds,
                                       meeting_start_s, meeting_end_s, source, record, nulls, ord)
            ORDER BY c.ord
            """,
            logger: logger
        )
    }

    /// The webhook intervals (`zoom_visit_intervals`, source webhook) of a batch's people in the minutes
    /// they joined, read in three look-ups (by id, by e-mail, by name: each exact in its partial index),
    /// and ZoomReportWriter's `webhooksHold` answered from them.
    private struct WebhookSightings {
        struct Key: Hashable {
            let meeting: ExactText
            let minute: Int64
            let who: ExactText
        }

        struct Sighting {
            let joined: Int64?
            let left: Int64?
            let withoutEmail: Bool
        }

        var byID: [Key: [Sighting]] = [:]
        var byEmail: [Key: [Sighting]] = [:]  // lowercased e-mail
        var byName: [Key: [Sighting]] = [:]

        static func read(_ rows: [ZoomReportRow], _ connection: PostgresConnection, _ logger: Logger) async throws
            -> WebhookSightings
        {
            var sightings = WebhookSightings()
            var ids: [(String, Int64, String)] = []
            var emails: [(String, Int64, String)] = []
            var names: [(String, Int64, String)] = []
            for row in rows {
                let minute = VisitTimeline.floor(row.joined, 60)
                if let id = row.participantID {
                    ids.append((row.meetingID, minute, id))
                } else {
                    if let email = row.email { emails.append((row.meetingID, minute, email.lowercased())) }
                    if let name = row.name { names.append((row.meetingID, minute, name)) }
                }
            }
            // `who` is one of the constant texts below.
            func look(_ keys: [(String, Int64, String)], _ who: String) async throws -> [Key: [Sighting]] {
                var found: [Key: [Sighting]] = [:]
                guard !keys.isEmpty else { return found }
                let rows = try await connection.query(
                    """
                    SELECT c.meeting_id, c.minute, c.who, w.joined_s, w.left_s, w.participant_email IS NULL
                    FROM (SELECT DISTINCT * FROM unnest(\(keys.map(\.0))::text[], \(keys.map(\.1))::int8[],
                                                        \(keys.map(\.2))::text[]) AS u (meeting_id, minute, who)) c
                    JOIN zoom_visit_intervals w
                      ON w.source = 'webhook' AND w.meeting_id = c.meeting_id AND w.joined_m = c.minute
                     AND \(unescaped: who) = c.who
                    """,
                    logger: logger
                )
                for try await (meeting, minute, value, joined, left, withoutEmail) in rows.decode(
                    (String, Int64, String, Int64?, Int64?, Bool).self
                ) {
                    found[Key(meeting: ExactText(meeting), minute: minute, who: ExactText(value)), default: []].append(
                        Sighting(joined: joined, left: left, withoutEmail: withoutEmail)
                    )
                }
                return found
            }
            sightings.byID = try await look(ids, "w.participant_id")
            sightings.byEmail = try await look(
                emails,
                "w.participant_email IS NOT NULL AND lower(w.participant_email)"
            )
            sightings.byName = try await look(names, "w.participant_name")
            return sightings
        }

        /// Whether a webhook interval of the row's meeting has the same person joining at the row's join
        /// (second, or minute for a row given to the minute) and leaving at `left` (alike), or (nil) having
        /// left at all.
        func hold(_ row: ZoomReportRow, leaving left: Int64?) -> Bool {
            let minute = VisitTimeline.floor(row.joined, 60)
            let second: Int64? = row.toTheMinute ? nil : row.joined
            let leftSecond: Int64? = row.toTheMinute ? nil : left
            let leftMinute: Int64? = row.toTheMinute ? left.map { VisitTimeline.floor($0, 60) } : nil
            func holds(_ sightings: [Sighting]?, withoutEmailOnly: Bool = false) -> Bool {
                sightings?.contains { sighting in
                    guard !withoutEmailOnly || sighting.withoutEmail else { return false }
                    if let second, sighting.joined != second { return false }
                    guard let stored = sighting.left else { return false }
                    // As SQL's `left_s / 60` (division toward zero).
                    return left == nil || stored == leftSecond || stored / 60 == leftMinute
                } ?? false
            }
            func key(_ who: String) -> Key {
                Key(meeting: ExactText(row.meetingID), minute: minute, who: ExactText(who))
            }
            if let id = row.participantID { return holds(byID[key(id)]) }
            if let email = row.email {
                if holds(byEmail[key(email.lowercased())]) { return true }
                guard let name = row.name else { return false }
                return holds(byName[key(name)], withoutEmailOnly: true)
            }
            guard let name = row.name else { return false }
            return holds(byName[key(name)])
        }
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
