import GRDB
import JSONSchema
import Kinds

/// Writes Zoom events: normalised rows deduplicated on (meeting id, visit uuid, event name, event time,
/// participant id) — NULL-safe, so two identical meeting-level events with no participant are one — each
/// visit's timeline recomputed from its events in the same transaction (so arrival order does not matter),
/// and per-event-name counters of events received and inserted.
struct ZoomWriter {
    let db: Database
    let fileID: String
    /// False for the chunks of a streamed file: its visits are refreshed once, with its ledger row.
    var refreshVisits = true

    func write(_ items: [Item<ZoomRecord>]) throws -> FileReport {
        var touched = Set<String>()
        return try write(items, touchedVisits: &touched)
    }

    /// As ``write(_:)``, adding the visits whose events it inserted to `touched` (refreshed here only
    /// with `refreshVisits`; a group commit refreshes each visit once for all its files).
    func write(_ items: [Item<ZoomRecord>], touchedVisits touched: inout Set<String>) throws -> FileReport {
        var stored = 0
        var duplicates = 0
        var skipped = 0
        var rejectedRecords = 0  // each item is one record, judged once: a count, no set
        var errors: [RecordProblem] = []
        var mine = Set<String>()
        for item in items {
            switch item.result {
            case .failure(let problems):
                rejectedRecords += 1
                problems.append(to: &errors)
            case .success(.urlValidation):
                skipped += 1
            case .success(.event(let event)):
                switch try insert(event, record: item.number) {
                case .ours:
                    stored += 1
                case .inserted:
                    stored += 1
                    if let uuid = event.visitUUID { mine.insert(uuid) }
                case .duplicate:
                    duplicates += 1
                case .conflict(let earlier):
                    rejectedRecords += 1
                    errors.append(
                        RecordProblem(
                            record: item.number,
                            line: item.line,
                            pointer: nil,
                            message:
                                "conflicts with the event stored from file \(earlier) under the same meeting id, visit uuid, event, event_ts and participant"
                        )
                    )
                }
            }
        }
        if refreshVisits {
            for uuid in mine { try refreshVisit(uuid) }
        }
        touched.formUnion(mine)
        var report = FileReport(
            outcome: FileReport.outcome(
                stored: stored,
                duplicates: duplicates,
                rejected: rejectedRecords,
                skipped: skipped
            ),
            stored: stored,
            duplicates: duplicates,
            rejected: rejectedRecords,
            errors: errors
        )
        if skipped > 0 {
            report.notes.append("\(skipped) endpoint.url_validation event(s) skipped: the HTTP endpoint answers these")
        }
        return report
    }

    enum Insertion {
        case inserted, duplicate
        case conflict(String)
        /// This very record, committed by an earlier chunk of this file before a crash.
        case ours
    }

    private func insert(_ event: ZoomEvent, record: Int) throws -> Insertion {
        let existing = try Row.fetchOne(
            db.cachedStatement(
                sql: """
                    SELECT raw_json, file_id, record FROM zoom_events
                    WHERE meeting_id = ? AND ifnull(visit_uuid, '') = ? AND event_name = ? AND event_ts = ?
                      AND ifnull(participant_id, '') = ?
                    """
            ),
            arguments: [
                event.meetingID, event.visitUUID ?? "", event.name, event.timestamp, event.participantID ?? "",
            ]
        )
        var outcome = Insertion.inserted
        if let existing, existing["file_id"] == fileID, existing["record"] == record {
            return .ours  // counted when that chunk committed
        }
        if let existing {
            let raw: String = existing["raw_json"]
            let same = raw == event.raw || (try? JSONParser.parse(raw)).map(ZoomReader.canonical) == event.value
            outcome = same ? .duplicate : .conflict(existing["file_id"])
        } else {
            try db.cachedStatement(
                sql: """
                    INSERT INTO zoom_events
                        (meeting_id, visit_uuid, event_name, event_ts, participant_id, participant_name, join_time,
                         leave_time, start_time, end_time, latency_ms, interpreter_requested, account_id, raw_json,
                         file_id, record)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """
            ).execute(arguments: [
                event.meetingID, event.visitUUID, event.name, event.timestamp, event.participantID,
                event.participantName, event.joinTime, event.leaveTime, event.startTime, event.endTime, event.latencyMs,
                event.interpreterRequested ? 1 : 0, event.accountID, event.raw, fileID, record,
            ])
        }
        let inserted = if case .inserted = outcome { 1 } else { 0 }
        try db.cachedStatement(
            sql: """
                INSERT INTO zoom_counters (event_name, received, inserted) VALUES (?, 1, ?)
                ON CONFLICT (event_name) DO UPDATE SET received = received + 1, inserted = inserted + excluded.inserted
                """
        ).execute(arguments: [event.name, inserted])
        return outcome
    }

    /// Recomputes the timelines of every visit that file `fileID` has events of.
    func refreshVisitsOfFile() throws {
        let uuids = try String.fetchAll(
            db,
            sql: "SELECT DISTINCT visit_uuid FROM zoom_events WHERE file_id = ? AND visit_uuid IS NOT NULL",
            arguments: [fileID]
        )
        for uuid in uuids { try refreshVisit(uuid) }
    }

    /// Recomputes one visit's timeline from all of its events: the same set of events gives the same
    /// timeline whatever order they arrived in. Its cost grows with the visit's events, so it runs once per
    /// visit per transaction, never once per file: Zoom posts one event per request, and a visit of 4,000
    /// events refreshed per file took 82 s (quadratic), refreshed per group commit about 1 s.
    func refreshVisit(_ uuid: String) throws {
        let rows = try Row.fetchAll(
            db.cachedStatement(
                sql: """
                    SELECT meeting_id, event_name, event_ts, participant_id, participant_name, join_time, leave_time,
                           start_time, end_time, latency_ms, interpreter_requested
                    FROM zoom_events WHERE visit_uuid = ?
                    """
            ),
            arguments: [uuid]
        )
        let timeline = VisitTimeline(
            events: rows.map { row in
                VisitTimeline.Event(
                    name: row["event_name"],
                    timestamp: row["event_ts"],
                    participantID: row["participant_id"],
                    participantName: row["participant_name"],
                    joinTime: row["join_time"],
                    leaveTime: row["leave_time"],
                    startTime: row["start_time"],
                    endTime: row["end_time"],
                    latencyMs: row["latency_ms"],
                    interpreterRequested: row["interpreter_requested"] == 1
                )
            }
        )
        let meetingID: String = rows.first?["meeting_id"] ?? ""
        try db.execute(sql: "DELETE FROM zoom_visit_intervals WHERE visit_uuid = ?", arguments: [uuid])
        try db.execute(
            sql: """
                INSERT OR REPLACE INTO zoom_visits
                    (visit_uuid, meeting_id, started_at, ended_at, duration_seconds, max_latency_ms,
                     interpreter_requested, participants, events)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                """,
            arguments: [
                uuid, meetingID, timeline.startedAt, timeline.endedAt, timeline.durationSeconds, timeline.maxLatencyMs,
                timeline.interpreterRequested ? 1 : 0, Set(timeline.intervals.map(\.participantID)).count, rows.count,
            ]
        )
        for interval in timeline.intervals {
            try db.cachedStatement(
                sql: """
                    INSERT INTO zoom_visit_intervals (visit_uuid, participant_id, participant_name, joined_at, left_at)
                    VALUES (?, ?, ?, ?, ?)
                    """
            ).execute(arguments: [
                uuid, interval.participantID, interval.participantName, interval.joinedAt, interval.leftAt,
            ])
        }
    }
}

/// A visit's timeline, computed from its events alone (order-independent).
struct VisitTimeline {
    struct Event {
        var name: String
        var timestamp: Int64
        var participantID: String?
        var participantName: String?
        var joinTime: String?
        var leaveTime: String?
        var startTime: String?
        var endTime: String?
        var latencyMs: Double?
        var interpreterRequested: Bool
    }

    struct Interval {
        var participantID: String
        var participantName: String?
        var joinedAt: String?
        var leftAt: String?
    }

    var startedAt: String?
    var endedAt: String?
    var durationSeconds: Int?
    var maxLatencyMs: Double?
    var interpreterRequested: Bool
    var intervals: [Interval]

    init(events: [Event]) {
        /// Milliseconds of an ISO time, else of `event_ts`.
        func millis(_ iso: String?, _ fallback: Int64) -> Int64 {
            iso.flatMap(RFC3339.epochMilliseconds) ?? fallback
        }
        let starts = events.filter { $0.name == "meeting.started" }.map { millis($0.startTime, $0.timestamp) }
        let ends = events.filter { $0.name == "meeting.ended" }.map { millis($0.endTime, $0.timestamp) }
        let start = starts.min()
        let end = ends.max()
        startedAt = start.map { RFC3339.format(epochMilliseconds: $0) }
        endedAt = end.map { RFC3339.format(epochMilliseconds: $0) }
        // Times are whatever the sender wrote (year 0000 to event_ts Int64.max): a span that does not fit
        // in 64 bits has no duration rather than trapping the daemon on every replay of its file.
        durationSeconds = start.flatMap { s in
            end.flatMap { e in
                let (span, overflow) = e.subtractingReportingOverflow(s)
                return overflow ? nil : Int(span / 1_000)
            }
        }
        maxLatencyMs = events.compactMap(\.latencyMs).max()
        interpreterRequested = events.contains { $0.interpreterRequested }

        // Join/leave intervals per participant; a participant may leave and rejoin.
        struct Edge {
            var at: Int64
            var join: Bool
            var name: String?
        }
        var edges: [String: [Edge]] = [:]
        for event in events {
            guard let id = event.participantID else { continue }
            if event.name.hasSuffix("participant_joined") {
                edges[id, default: []].append(
                    Edge(at: millis(event.joinTime, event.timestamp), join: true, name: event.participantName)
                )
            } else if event.name.hasSuffix("participant_left") {
                edges[id, default: []].append(
                    Edge(at: millis(event.leaveTime, event.timestamp), join: false, name: event.participantName)
                )
            }
        }
        var intervals: [Interval] = []
        for id in edges.keys.sorted() {
            // Same instant: the join first, so a zero-length visit is one interval.
            let sorted = edges[id]!.sorted { ($0.at, $0.join ? 0 : 1) < ($1.at, $1.join ? 0 : 1) }
            var open: (at: Int64, name: String?)?
            for edge in sorted {
                if edge.join {
                    if open == nil { open = (edge.at, edge.name) }
                } else if let started = open {
                    intervals.append(
                        Interval(
                            participantID: id,
                            participantName: started.name ?? edge.name,
                            joinedAt: RFC3339.format(epochMilliseconds: started.at),
                            leftAt: RFC3339.format(epochMilliseconds: edge.at)
                        )
                    )
                    open = nil
                } else {
                    // A leave with no join seen: the interval's start is unknown.
                    intervals.append(
                        Interval(
                            participantID: id,
                            participantName: edge.name,
                            joinedAt: nil,
                            leftAt: RFC3339.format(epochMilliseconds: edge.at)
                        )
                    )
                }
            }
            if let started = open {
                intervals.append(
                    Interval(
                        participantID: id,
                        participantName: started.name,
                        joinedAt: RFC3339.format(epochMilliseconds: started.at),
                        leftAt: nil
                    )
                )
            }
        }
        self.intervals = intervals
    }
}
