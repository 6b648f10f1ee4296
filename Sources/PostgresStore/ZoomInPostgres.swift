import JSONSchema
import Kinds
import Logging
import PostgresNIO
import Store

/// Zoom events in PostgreSQL: ZoomWriter's rules (events unique on meeting, visit uuid, event name,
/// event time and participant — NULL-safe —; a visit's timeline from all of its events and report rows;
/// per-event-name counters), set by set: a batch's events in one statement, their look-ups in one, each
/// touched visit refreshed once per transaction.
///
/// Across hosts, locks are taken in one order by every transaction: event keys (in key order, by bytes),
/// then visits (by uuid), then counters (by name), so two hosts writing the same visit or the same keys
/// wait for each other and do not deadlock. A visit's timeline is computed by whichever transaction
/// refreshes it last, under the lock of its `zoom_visits` row (taken first, then its events read in a
/// statement of their own, which sees every event committed until the lock was had).
enum ZoomInPostgres {
    /// What a batch's files added to `zoom_counters`: events received (this very record replayed after a
    /// crash excluded) and inserted, per event name.
    struct Counts {
        var received: [ExactText: Int64] = [:]
        var inserted: [ExactText: Int64] = [:]
    }

    /// The NULLs of an event's optional columns, one bit each (arrays of PostgreSQL cannot carry them).
    private enum Null: Int64 {
        case visit = 1, participant = 2, name = 4, join = 8, leave = 16, start = 32, end = 64, latency = 128,
            account = 256, email = 512
    }

    /// The events of several files, in two statements whatever their number: every event inserted in key
    /// order (`ON CONFLICT DO NOTHING`: the first of a key in file order wins, as one file after another
    /// would have it), then one look-up of the keys not stored, each judged as ZoomWriter judges it (this
    /// very record committed by an earlier chunk → stored; the same event → duplicate; else a conflict
    /// naming the file that stored the key). The visits whose events were inserted join `touched`.
    static func write(
        files: [(id: String, items: [Item<ZoomRecord>])],
        touched: inout Set<ExactText>,
        counts: inout Counts,
        _ connection: PostgresConnection,
        _ logger: Logger
    ) async throws -> [FileReport] {
        struct Row {
            let file: Int
            let number: Int
            let line: Int?
            let event: ZoomEvent
            var key: [ExactText] {
                [
                    ExactText(event.meetingID), ExactText(event.visitUUID ?? ""), ExactText(event.name),
                    ExactText(String(event.timestamp)), ExactText(event.participantID ?? ""),
                ]
            }
        }
        var tally = FileTallies(files.count)
        var rows: [Row] = []
        for (index, file) in files.enumerated() {
            for item in file.items {
                switch item.result {
                case .failure(let problems):
                    tally.failed(index, problems)
                case .success(.urlValidation):
                    tally.skipped[index] += 1
                case .success(.event(let event)):
                    rows.append(Row(file: index, number: item.number, line: item.line, event: event))
                }
            }
        }
        // Key order (by bytes; the time as a number), stable: a key's rows keep their file order.
        func before(_ a: (offset: Int, element: Row), _ b: (offset: Int, element: Row)) -> Bool {
            let (x, y) = (a.element.event, b.element.event)
            let left = (ExactText(x.meetingID), ExactText(x.visitUUID ?? ""), ExactText(x.name))
            let right = (ExactText(y.meetingID), ExactText(y.visitUUID ?? ""), ExactText(y.name))
            if left != right { return left < right }
            if x.timestamp != y.timestamp { return x.timestamp < y.timestamp }
            let (p, q) = (ExactText(x.participantID ?? ""), ExactText(y.participantID ?? ""))
            return p != q ? p < q : a.offset < b.offset
        }
        let ordered = rows.enumerated().sorted(by: before).map(\.element)
        func key(_ row: Row) -> ExactText { ExactText(row.key.map(\.text).joined(separator: "\u{0}")) }
        var inserted = Set<ExactText>()  // "record\u{0}file id" of the rows stored now
        if !ordered.isEmpty {
            let events = ordered.map(\.event)
            let nulls = events.map { event in
                var bits: Int64 = 0
                if event.visitUUID == nil { bits |= Null.visit.rawValue }
                if event.participantID == nil { bits |= Null.participant.rawValue }
                if event.participantName == nil { bits |= Null.name.rawValue }
                if event.joinTime == nil { bits |= Null.join.rawValue }
                if event.leaveTime == nil { bits |= Null.leave.rawValue }
                if event.startTime == nil { bits |= Null.start.rawValue }
                if event.endTime == nil { bits |= Null.end.rawValue }
                if event.latencyMs == nil { bits |= Null.latency.rawValue }
                if event.accountID == nil { bits |= Null.account.rawValue }
                if event.participantEmail == nil { bits |= Null.email.rawValue }
                return bits
            }
            let result = try await connection.query(
                """
                INSERT INTO zoom_events
                    (meeting_id, visit_uuid, event_name, event_ts, participant_id, participant_name, join_time,
                     leave_time, start_time, end_time, latency_ms, interpreter_requested, account_id, raw_json,
                     file_id, record, participant_email)
                SELECT c.meeting_id, CASE WHEN c.nulls & 1 = 0 THEN c.visit_uuid END, c.event_name, c.event_ts,
                       CASE WHEN c.nulls & 2 = 0 THEN c.participant_id END,
                       CASE WHEN c.nulls & 4 = 0 THEN c.participant_name END,
                       CASE WHEN c.nulls & 8 = 0 THEN c.join_time END, CASE WHEN c.nulls & 16 = 0 THEN c.leave_time END,
                       CASE WHEN c.nulls & 32 = 0 THEN c.start_time END, CASE WHEN c.nulls & 64 = 0 THEN c.end_time END,
                       CASE WHEN c.nulls & 128 = 0 THEN c.latency_ms END, c.interpreter_requested,
                       CASE WHEN c.nulls & 256 = 0 THEN c.account_id END, c.raw_json, c.file_id, c.record,
                       CASE WHEN c.nulls & 512 = 0 THEN c.participant_email END
                FROM unnest(\(events.map(\.meetingID))::text[], \(events.map { $0.visitUUID ?? "" })::text[],
                            \(events.map(\.name))::text[], \(events.map(\.timestamp))::int8[],
                            \(events.map { $0.participantID ?? "" })::text[],
                            \(events.map { $0.participantName ?? "" })::text[], \(events.map { $0.joinTime ?? "" })::text[],
                            \(events.map { $0.leaveTime ?? "" })::text[], \(events.map { $0.startTime ?? "" })::text[],
                            \(events.map { $0.endTime ?? "" })::text[], \(events.map { $0.latencyMs ?? 0 })::float8[],
                            \(events.map { Int64($0.interpreterRequested ? 1 : 0) })::int8[],
                            \(events.map { $0.accountID ?? "" })::text[], \(events.map(\.raw))::text[],
                            \(ordered.map { files[$0.file].id })::text[], \(ordered.map { Int64($0.number) })::int8[],
                            \(events.map { $0.participantEmail ?? "" })::text[], \(nulls)::int8[])
                     WITH ORDINALITY AS c (meeting_id, visit_uuid, event_name, event_ts, participant_id,
                                           participant_name, join_time, leave_time, start_time, end_time, latency_ms,
                                           interpreter_requested, account_id, raw_json, file_id, record,
                                           participant_email, nulls, ord)
                ORDER BY c.ord
                ON CONFLICT DO NOTHING
                RETURNING record, file_id, visit_uuid
                """,
                logger: logger
            )
            for try await (record, file, visit) in result.decode((Int64, String, String?).self) {
                inserted.insert(ExactText("\(record)\u{0}\(file)"))
                if let visit { touched.insert(ExactText(visit)) }
            }
        }
        let others = ordered.filter { !inserted.contains(ExactText("\($0.number)\u{0}\(files[$0.file].id)")) }
        var found: [ExactText: (raw: String, file: String, record: Int64)] = [:]
        if !others.isEmpty {
            var keys = Set<ExactText>()
            var picked: [ZoomEvent] = []
            for row in others where keys.insert(key(row)).inserted { picked.append(row.event) }
            let result = try await connection.query(
                """
                SELECT e.meeting_id, coalesce(e.visit_uuid, ''), e.event_name, e.event_ts, coalesce(e.participant_id, ''),
                       e.raw_json, e.file_id, e.record
                FROM zoom_events e
                JOIN unnest(\(picked.map(\.meetingID))::text[], \(picked.map { $0.visitUUID ?? "" })::text[],
                            \(picked.map(\.name))::text[], \(picked.map(\.timestamp))::int8[],
                            \(picked.map { $0.participantID ?? "" })::text[])
                     AS k (meeting_id, visit_uuid, event_name, event_ts, participant_id)
                  ON e.meeting_id = k.meeting_id AND coalesce(e.visit_uuid, '') = k.visit_uuid
                 AND e.event_name = k.event_name AND e.event_ts = k.event_ts
                 AND coalesce(e.participant_id, '') = k.participant_id
                """,
                logger: logger
            )
            for try await (meeting, visit, name, timestamp, participant, raw, file, record) in result.decode(
                (String, String, String, Int64, String, String, String, Int64).self
            ) {
                let parts = [meeting, visit, name, String(timestamp), participant]
                found[ExactText(parts.joined(separator: "\u{0}"))] = (raw, file, record)
            }
        }
        var parsed: [ExactText: JSONValue?] = [:]
        for row in ordered {
            let fileID = files[row.file].id
            let name = ExactText(row.event.name)
            if inserted.contains(ExactText("\(row.number)\u{0}\(fileID)")) {
                tally.stored[row.file] += 1
                counts.received[name, default: 0] += 1
                counts.inserted[name, default: 0] += 1
                continue
            }
            guard let earlier = found[key(row)] else { throw PostgresStoreError.neitherStoredNorFound("a Zoom event") }
            if sameText(earlier.file, fileID) && earlier.record == Int64(row.number) {
                tally.stored[row.file] += 1  // this very record, committed (and counted) by an earlier chunk
                continue
            }
            counts.received[name, default: 0] += 1
            // The stored event parsed once per key, however many rows of the batch meet it (a large stored
            // event met by thousands of rows cost their product: found by the hostile review).
            let same: Bool
            if sameText(earlier.raw, row.event.raw) {
                same = true
            } else {
                let stored = parsed[key(row)] ?? (try? JSONParser.parse(earlier.raw)).map(ZoomReader.canonical)
                parsed[key(row)] = .some(stored)
                same = stored == row.event.value
            }
            if same {
                tally.duplicates[row.file] += 1
            } else {
                tally.conflict(
                    row.file,
                    record: row.number,
                    line: row.line,
                    "conflicts with the event stored from file \(earlier.file) under the same meeting id, visit uuid, "
                        + "event, event_ts and participant"
                )
            }
        }
        return files.indices.map { index in
            var report = tally.report(index)
            if tally.skipped[index] > 0 {
                report.notes.append(
                    "\(tally.skipped[index]) endpoint.url_validation event(s) skipped: the HTTP endpoint answers these"
                )
            }
            return report
        }
    }

    /// Adds a batch's counts to `zoom_counters`, names in order (the last locks a transaction takes).
    static func addCounts(_ counts: Counts, _ connection: PostgresConnection, _ logger: Logger) async throws {
        let names = counts.received.keys.sorted()
        guard !names.isEmpty else { return }
        try await connection.query(
            """
            INSERT INTO zoom_counters (event_name, received, inserted)
            SELECT c.event_name, c.received, c.inserted
            FROM unnest(\(names.map(\.text))::text[], \(names.map { counts.received[$0] ?? 0 })::int8[],
                        \(names.map { counts.inserted[$0] ?? 0 })::int8[]) WITH ORDINALITY AS c (event_name, received, inserted, ord)
            ORDER BY c.ord
            ON CONFLICT (event_name) DO UPDATE SET received = zoom_counters.received + EXCLUDED.received,
                                                    inserted = zoom_counters.inserted + EXCLUDED.inserted
            """,
            logger: logger
        )
    }

    /// The visits that files `ids` have events of (a large file's, refreshed with its verdict).
    static func visits(ofFiles ids: [String], _ connection: PostgresConnection, _ logger: Logger) async throws
        -> Set<ExactText>
    {
        guard !ids.isEmpty else { return [] }
        let rows = try await connection.query(
            """
            SELECT DISTINCT visit_uuid FROM zoom_events WHERE file_id = ANY(\(ids)::text[]) AND visit_uuid IS NOT NULL
            """,
            logger: logger
        )
        var visits = Set<ExactText>()
        for try await uuid in rows.decode(String.self) { visits.insert(ExactText(uuid)) }
        return visits
    }

    /// Recomputes the timelines of `touched` visits from all of their events and report rows (ZoomWriter's
    /// `refreshVisit`, the same `VisitTimeline`), ``visitGroup`` visits at a time in uuid order: their
    /// rows made or locked first; then their events read in one pass (a visit's events at a time in
    /// memory), the timelines written in a few statements; a visit left with neither events nor report
    /// rows goes.
    static func refreshVisits(_ touched: Set<ExactText>, _ connection: PostgresConnection, _ logger: Logger)
        async throws
    {
        // A group of visits at a time, in uuid order (the locks too): a large export of many visits holds
        // one group's timelines in memory, not all of them (found by the hostile review: 1M visits, 1.1 GB).
        let sorted = touched.sorted().map(\.text)
        for start in stride(from: 0, to: sorted.count, by: Self.visitGroup) {
            try await refreshGroup(
                Array(sorted[start..<min(start + Self.visitGroup, sorted.count)]),
                connection,
                logger
            )
        }
    }

    /// Visits refreshed together (their timelines held at once).
    static let visitGroup = 256

    private static func refreshGroup(_ uuids: [String], _ connection: PostgresConnection, _ logger: Logger)
        async throws
    {
        try await connection.query(
            """
            INSERT INTO zoom_visits (visit_uuid, meeting_id, interpreter_requested, participants, events)
            SELECT c.uuid, '', 0, 0, 0 FROM unnest(\(uuids)::text[]) WITH ORDINALITY AS c (uuid, ord)
            ORDER BY c.ord
            ON CONFLICT (visit_uuid) DO UPDATE SET visit_uuid = EXCLUDED.visit_uuid
            """,
            logger: logger
        )
        var reports: [ExactText: (meeting: String?, rows: [VisitTimeline.Report])] = [:]
        let reportRows = try await connection.query(
            """
            SELECT visit_key, meeting_id, participant_id, participant_email, participant_name, joined_s, left_s,
                   meeting_start_s, meeting_end_s, join_precision
            FROM zoom_report_intervals WHERE visit_key = ANY(\(uuids)::text[]) ORDER BY seq
            """,
            logger: logger
        )
        for try await (visit, meeting, id, email, name, joined, left, start, end, precision) in reportRows.decode(
            (String, String, String?, String?, String?, Int64, Int64?, Int64?, Int64?, Int64).self
        ) {
            let row = VisitTimeline.Report(
                participantID: id,
                email: email,
                name: name,
                joined: joined,
                left: left,
                meetingStart: start,
                meetingEnd: end,
                toTheMinute: precision == 60
            )
            let key = ExactText(visit)
            reports[key, default: (nil, [])].rows.append(row)  // in place: no copy per row
            if !meeting.isEmpty { reports[key]!.meeting = VisitTimeline.smaller(reports[key]!.meeting, meeting) }
        }

        struct Computed {
            let uuid: String
            let meeting: String
            let timeline: VisitTimeline
            let events: Int
        }
        var computed: [Computed] = []
        var current: (uuid: String, meeting: String, events: [VisitTimeline.Event])?
        func finish() {
            guard let visit = current else { return }
            let own = reports.removeValue(forKey: ExactText(visit.uuid))
            computed.append(
                Computed(
                    uuid: visit.uuid,
                    meeting: visit.meeting,
                    timeline: VisitTimeline(events: visit.events, reports: own?.rows ?? []),
                    events: visit.events.count
                )
            )
            current = nil
        }
        // Grouped by uuid's bytes (COLLATE "C"), each visit's events in the order they were stored.
        let eventRows = try await connection.query(
            """
            SELECT visit_uuid, meeting_id, event_name, event_ts, participant_id, participant_name, join_time,
                   leave_time, start_time, end_time, latency_ms, interpreter_requested, participant_email
            FROM zoom_events WHERE visit_uuid = ANY(\(uuids)::text[])
            ORDER BY visit_uuid COLLATE "C", seq
            """,
            logger: logger
        )
        for try await row in eventRows {
            let (
                uuid, meeting, name, timestamp, id, participant, join, leave, start, end, latency, interpreter, email
            ) =
                try row.decode(
                    (
                        String, String, String, Int64, String?, String?, String?, String?, String?, String?, Double?,
                        Int64, String?
                    ).self
                )
            if let visit = current, !sameText(visit.uuid, uuid) { finish() }
            if current == nil { current = (uuid, meeting, []) }
            current!.meeting = VisitTimeline.smaller(current!.meeting, meeting)
            current!.events.append(
                VisitTimeline.Event(
                    name: name,
                    timestamp: timestamp,
                    participantID: id,
                    participantName: participant,
                    participantEmail: email,
                    joinTime: join,
                    leaveTime: leave,
                    startTime: start,
                    endTime: end,
                    latencyMs: latency,
                    interpreterRequested: interpreter == 1
                )
            )
        }
        finish()
        // Visits known from report rows alone.
        for (uuid, own) in reports.sorted(by: { $0.key < $1.key }) {
            computed.append(
                Computed(
                    uuid: uuid.text,
                    meeting: own.meeting ?? "",
                    timeline: VisitTimeline(events: [], reports: own.rows),
                    events: 0
                )
            )
        }
        try await connection.query(
            "DELETE FROM zoom_visit_intervals WHERE visit_uuid = ANY(\(uuids)::text[])",
            logger: logger
        )
        let kept = Set(computed.map { ExactText($0.uuid) })
        let gone = uuids.filter { !kept.contains(ExactText($0)) }
        if !gone.isEmpty {
            try await connection.query(
                "DELETE FROM zoom_visits WHERE visit_uuid = ANY(\(gone)::text[])",
                logger: logger
            )
        }
        guard !computed.isEmpty else { return }
        let timelines = computed.map(\.timeline)
        // NULLs, one bit each: started_at 1, ended_at 2, duration 4, latency 8, first_s/last_s 16.
        let visitNulls = timelines.map { timeline -> Int64 in
            (timeline.startedAt == nil ? 1 : 0) | (timeline.endedAt == nil ? 2 : 0)
                | (timeline.durationSeconds == nil ? 4 : 0) | (timeline.maxLatencyMs == nil ? 8 : 0)
                | (timeline.span == nil ? 16 : 0)
        }
        try await connection.query(
            """
            UPDATE zoom_visits v
            SET meeting_id = c.meeting_id, started_at = CASE WHEN c.nulls & 1 = 0 THEN c.started_at END,
                ended_at = CASE WHEN c.nulls & 2 = 0 THEN c.ended_at END,
                duration_seconds = CASE WHEN c.nulls & 4 = 0 THEN c.duration_seconds END,
                max_latency_ms = CASE WHEN c.nulls & 8 = 0 THEN c.max_latency_ms END,
                interpreter_requested = c.interpreter_requested, participants = c.participants, events = c.events,
                first_s = CASE WHEN c.nulls & 16 = 0 THEN c.first_s END,
                last_s = CASE WHEN c.nulls & 16 = 0 THEN c.last_s END
            FROM unnest(\(computed.map(\.uuid))::text[], \(computed.map(\.meeting))::text[],
                        \(timelines.map { $0.startedAt ?? "" })::text[], \(timelines.map { $0.endedAt ?? "" })::text[],
                        \(timelines.map { Int64($0.durationSeconds ?? 0) })::int8[],
                        \(timelines.map { $0.maxLatencyMs ?? 0 })::float8[],
                        \(timelines.map { Int64($0.interpreterRequested ? 1 : 0) })::int8[],
                        \(timelines.map { Int64($0.participantCount) })::int8[],
                        \(computed.map { Int64($0.events) })::int8[], \(timelines.map { $0.span?.first ?? 0 })::int8[],
                        \(timelines.map { $0.span?.last ?? 0 })::int8[], \(visitNulls)::int8[])
                 AS c (uuid, meeting_id, started_at, ended_at, duration_seconds, max_latency_ms,
                       interpreter_requested, participants, events, first_s, last_s, nulls)
            WHERE v.visit_uuid = c.uuid
            """,
            logger: logger
        )
        var visit: [String] = []
        var meeting: [String] = []
        var rows: [VisitTimeline.IntervalRow] = []
        for entry in computed {
            for row in entry.timeline.intervalRows {
                visit.append(entry.uuid)
                meeting.append(entry.meeting)
                rows.append(row)
            }
        }
        guard !rows.isEmpty else { return }
        // NULLs: participant_name 1, joined (at, s, m) 2, left (at, s) 4, participant_email 8.
        let nulls = rows.map { row -> Int64 in
            (row.participantName == nil ? 1 : 0) | (row.joinedAt == nil ? 2 : 0) | (row.leftAt == nil ? 4 : 0)
                | (row.email == nil ? 8 : 0)
        }
        try await connection.query(
            """
            INSERT INTO zoom_visit_intervals
                (visit_uuid, participant_id, participant_name, joined_at, left_at, meeting_id, participant_email,
                 joined_s, left_s, source, joined_m)
            SELECT c.uuid, c.participant_id, CASE WHEN c.nulls & 1 = 0 THEN c.participant_name END,
                   CASE WHEN c.nulls & 2 = 0 THEN c.joined_at END, CASE WHEN c.nulls & 4 = 0 THEN c.left_at END,
                   c.meeting_id, CASE WHEN c.nulls & 8 = 0 THEN c.participant_email END,
                   CASE WHEN c.nulls & 2 = 0 THEN c.joined_s END, CASE WHEN c.nulls & 4 = 0 THEN c.left_s END,
                   c.source, CASE WHEN c.nulls & 2 = 0 THEN c.joined_m END
            FROM unnest(\(visit)::text[], \(rows.map(\.participantID))::text[],
                        \(rows.map { $0.participantName ?? "" })::text[], \(rows.map { $0.joinedAt ?? "" })::text[],
                        \(rows.map { $0.leftAt ?? "" })::text[], \(meeting)::text[], \(rows.map { $0.email ?? "" })::text[],
                        \(rows.map { $0.joinedS ?? 0 })::int8[], \(rows.map { $0.leftS ?? 0 })::int8[],
                        \(rows.map(\.source))::text[], \(rows.map { $0.joinedM ?? 0 })::int8[], \(nulls)::int8[])
                 WITH ORDINALITY AS c (uuid, participant_id, participant_name, joined_at, left_at, meeting_id,
                                       participant_email, joined_s, left_s, source, joined_m, nulls, ord)
            ORDER BY c.ord
            """,
            logger: logger
        )
    }
}
