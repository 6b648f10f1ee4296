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
        var touched = ZoomTouched()
        return try write(items, touched: &touched)
    }

    /// As ``write(_:)``, adding the visits whose events it inserted to `touched` (refreshed here only
    /// with `refreshVisits`; a group commit refreshes each visit once for all its files).
    func write(_ items: [Item<ZoomRecord>], touched: inout ZoomTouched) throws -> FileReport {
        var stored = 0
        var duplicates = 0
        var skipped = 0
        var rejectedRecords = 0  // each item is one record, judged once: a count, no set
        var errors: [RecordProblem] = []
        var mine = Set<ExactText>()  // by bytes: uuids the database tells apart are refreshed apart
        for item in items {
            switch item.result {
            case .failure(let problems):
                rejectedRecords += 1
                problems.append(to: &errors)
            case .success(.urlValidation):
                skipped += 1
            case .success(.event(let event)):
                switch try insert(event, record: item.number, parsed: &touched.parsedEvents) {
                case .ours:
                    stored += 1
                case .inserted:
                    stored += 1
                    if let uuid = event.visitUUID { mine.insert(ExactText(uuid)) }
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
            for uuid in mine { try refreshVisit(uuid.text) }
        }
        touched.visits.formUnion(mine)
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

    private func insert(_ event: ZoomEvent, record: Int, parsed: inout [Int64: JSONValue?]) throws -> Insertion {
        let existing = try Row.fetchOne(
            db.cachedStatement(
                sql: """
                    SELECT seq, raw_json, file_id, record FROM zoom_events
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
            let seq: Int64 = existing["seq"]
            // The stored event parsed once, however many records of the file meet it (a large stored event
            // met by thousands of records cost their product: found by the hostile review).
            let same: Bool
            if sameText(raw, event.raw) {
                same = true
            } else {
                let stored = parsed[seq] ?? (try? JSONParser.parse(raw)).map(ZoomReader.canonical)
                parsed[seq] = .some(stored)
                same = stored == event.value
            }
            outcome = same ? .duplicate : .conflict(existing["file_id"])
        } else {
            try db.cachedStatement(
                sql: """
                    INSERT INTO zoom_events
                        (meeting_id, visit_uuid, event_name, event_ts, participant_id, participant_name, join_time,
                         leave_time, start_time, end_time, latency_ms, interpreter_requested, account_id, raw_json,
                         file_id, record, participant_email)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """
            ).execute(arguments: [
                event.meetingID, event.visitUUID, event.name, event.timestamp, event.participantID,
                event.participantName, event.joinTime, event.leaveTime, event.startTime, event.endTime, event.latencyMs,
                event.interpreterRequested ? 1 : 0, event.accountID, event.raw, fileID, record, event.participantEmail,
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
        // And the report rows of their meetings resolved again (a visit's span may have grown).
        try ZoomTouched(visits: Set(uuids.map(ExactText.init))).refresh(db: db)
    }

    /// Recomputes one visit's timeline from all of its events and the report rows resolved to it: the same
    /// set gives the same timeline whatever order they arrived in. Its cost grows with the visit's events,
    /// so it runs once per visit per transaction, never once per file: Zoom posts one event per request,
    /// and a visit of 4,000 events refreshed per file took 82 s (quadratic), refreshed per group commit
    /// about 1 s. A visit left with neither (a report's visit whose rows moved to a webhook visit) goes.
    func refreshVisit(_ uuid: String) throws {
        // Read through cursors into the timeline's own values: a visit of 130,000 rows held as GRDB rows
        // took 65 MB more.
        var meetingID: String?
        var events: [VisitTimeline.Event] = []
        let eventRows = try Row.fetchCursor(
            db.cachedStatement(
                sql: """
                    SELECT meeting_id, event_name, event_ts, participant_id, participant_name, join_time, leave_time,
                           start_time, end_time, latency_ms, interpreter_requested, participant_email
                    FROM zoom_events WHERE visit_uuid = ?
                    """
            ),
            arguments: [uuid]
        )
        while let row = try eventRows.next() {
            meetingID = VisitTimeline.smaller(meetingID, row["meeting_id"])
            events.append(
                VisitTimeline.Event(
                    name: row["event_name"],
                    timestamp: row["event_ts"],
                    participantID: row["participant_id"],
                    participantName: row["participant_name"],
                    participantEmail: row["participant_email"],
                    joinTime: row["join_time"],
                    leaveTime: row["leave_time"],
                    startTime: row["start_time"],
                    endTime: row["end_time"],
                    latencyMs: row["latency_ms"],
                    interpreterRequested: row["interpreter_requested"] == 1
                )
            )
        }
        var reports: [VisitTimeline.Report] = []
        let reportRows = try Row.fetchCursor(
            db.cachedStatement(
                sql: """
                    SELECT meeting_id, participant_id, participant_email, participant_name, joined_s, left_s,
                           meeting_start_s, meeting_end_s, join_precision
                    FROM zoom_report_intervals WHERE visit_key = ?
                    """
            ),
            arguments: [uuid]
        )
        while let row = try reportRows.next() {
            if events.isEmpty, let meeting = row["meeting_id"] as String?, !meeting.isEmpty {
                meetingID = VisitTimeline.smaller(meetingID, meeting)
            }
            reports.append(
                VisitTimeline.Report(
                    participantID: row["participant_id"],
                    email: row["participant_email"],
                    name: row["participant_name"],
                    joined: row["joined_s"],
                    left: row["left_s"],
                    meetingStart: row["meeting_start_s"],
                    meetingEnd: row["meeting_end_s"],
                    toTheMinute: row["join_precision"] == 60
                )
            )
        }
        try db.execute(sql: "DELETE FROM zoom_visit_intervals WHERE visit_uuid = ?", arguments: [uuid])
        if events.isEmpty && reports.isEmpty {
            try db.execute(sql: "DELETE FROM zoom_visits WHERE visit_uuid = ?", arguments: [uuid])
            return
        }
        let eventCount = events.count
        let timeline = VisitTimeline(events: events, reports: reports)
        events = []
        reports = []
        let meeting = meetingID ?? ""
        try db.execute(
            sql: """
                INSERT OR REPLACE INTO zoom_visits
                    (visit_uuid, meeting_id, started_at, ended_at, duration_seconds, max_latency_ms,
                     interpreter_requested, participants, events, first_s, last_s)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """,
            arguments: [
                uuid, meeting, timeline.startedAt, timeline.endedAt, timeline.durationSeconds, timeline.maxLatencyMs,
                timeline.interpreterRequested ? 1 : 0, timeline.participantCount, eventCount, timeline.span?.first,
                timeline.span?.last,
            ]
        )
        for row in timeline.intervalRows {
            try db.cachedStatement(
                sql: """
                    INSERT INTO zoom_visit_intervals
                        (visit_uuid, participant_id, participant_name, joined_at, left_at, meeting_id, participant_email,
                         joined_s, left_s, source, joined_m)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """
            ).execute(arguments: [
                uuid, row.participantID, row.participantName, row.joinedAt, row.leftAt, meeting, row.email,
                row.joinedS, row.leftS, row.source, row.joinedM,
            ])
        }
    }
}

/// A visit's timeline, computed from its events and its report rows alone (order-independent); both
/// stores write what it computes (``participantCount``, ``intervalRows``).
package struct VisitTimeline {
    package struct Event {
        var name: String
        var timestamp: Int64
        var participantID: String?
        var participantName: String?
        var participantEmail: String?
        var joinTime: String?
        var leaveTime: String?
        var startTime: String?
        var endTime: String?
        var latencyMs: Double?
        var interpreterRequested: Bool

        package init(
            name: String,
            timestamp: Int64,
            participantID: String?,
            participantName: String?,
            participantEmail: String?,
            joinTime: String?,
            leaveTime: String?,
            startTime: String?,
            endTime: String?,
            latencyMs: Double?,
            interpreterRequested: Bool
        ) {
            self.name = name
            self.timestamp = timestamp
            self.participantID = participantID
            self.participantName = participantName
            self.participantEmail = participantEmail
            self.joinTime = joinTime
            self.leaveTime = leaveTime
            self.startTime = startTime
            self.endTime = endTime
            self.latencyMs = latencyMs
            self.interpreterRequested = interpreterRequested
        }
    }

    /// One row of a participants report (seconds since the epoch).
    package struct Report {
        var participantID: String?
        var email: String?
        var name: String?
        var joined: Int64
        var left: Int64?
        var meetingStart: Int64?
        var meetingEnd: Int64?
        /// Its times were given to the minute only: it matches a join in that minute.
        var toTheMinute = false

        package init(
            participantID: String?,
            email: String?,
            name: String?,
            joined: Int64,
            left: Int64?,
            meetingStart: Int64?,
            meetingEnd: Int64?,
            toTheMinute: Bool
        ) {
            self.participantID = participantID
            self.email = email
            self.name = name
            self.joined = joined
            self.left = left
            self.meetingStart = meetingStart
            self.meetingEnd = meetingEnd
            self.toTheMinute = toTheMinute
        }
    }

    /// One row of `zoom_visit_intervals` (besides its visit and meeting).
    package struct IntervalRow {
        package var participantID: String
        package var participantName: String?
        package var joinedAt: String?
        package var leftAt: String?
        package var email: String?
        package var joinedS: Int64?
        package var leftS: Int64?
        package var joinedM: Int64?
        package var source: String
    }

    /// The participants of its intervals, told apart by bytes as the databases tell ids apart.
    package var participantCount: Int { Set(intervals.map { ExactText($0.participantID) }).count }

    /// Its intervals as the stores write them.
    package var intervalRows: [IntervalRow] {
        intervals.map { interval in
            IntervalRow(
                participantID: interval.participantID,
                participantName: interval.participantName,
                joinedAt: interval.joinedMs.map { RFC3339.format(epochMilliseconds: $0) },
                leftAt: interval.leftMs.map { RFC3339.format(epochMilliseconds: $0) },
                email: interval.email,
                joinedS: interval.joinedMs.map { Self.seconds($0) },
                leftS: interval.leftMs.map { Self.seconds($0) },
                joinedM: interval.joinedMs.map { Self.floor($0, 60_000) },
                source: interval.source.rawValue
            )
        }
    }

    enum Source: String {
        case webhook
        case report
        /// Webhooks saw the join (or the leave); a report gave the other end.
        case both = "webhook+report"
    }

    struct Interval {
        var participantID: String
        /// The id to match a report row with: the webhook's participant id, a report row's own id.
        var matchID: String?
        var participantName: String?
        var email: String?
        var joinedMs: Int64?
        var leftMs: Int64?
        var source: Source
        /// Its join or leave came from a report given to the minute: an exact time replaces it.
        var joinToTheMinute = false
        var leaveToTheMinute = false
    }

    package var startedAt: String?
    package var endedAt: String?
    package var durationSeconds: Int?
    package var maxLatencyMs: Double?
    package var interpreterRequested: Bool
    var intervals: [Interval]
    /// The first and last instant its webhook events name (seconds), which report rows are resolved
    /// against; nil for a visit known from reports alone.
    package var span: (first: Int64, last: Int64)?

    /// Of two meeting ids, the smaller by bytes: a visit's meeting whatever order its events were stored
    /// in (one uuid under two meeting ids is a hostile sender's; either way, the same answer).
    package static func smaller(_ kept: String?, _ next: String) -> String {
        guard let kept else { return next }
        return ExactText(next) < ExactText(kept) ? next : kept
    }

    /// Whole seconds of milliseconds since the epoch (rounded down, before 1970 as after).
    static func seconds(_ ms: Int64) -> Int64 { floor(ms, 1_000) }

    /// `value / unit` rounded down (before 1970 as after).
    package static func floor(_ value: Int64, _ unit: Int64) -> Int64 {
        value >= 0 ? value / unit : (value - unit + 1) / unit
    }

    package init(events: [Event], reports: [Report] = []) {
        /// Milliseconds of an ISO time, else of `event_ts`.
        func millis(_ iso: String?, _ fallback: Int64) -> Int64 {
            iso.flatMap(RFC3339.epochMilliseconds) ?? fallback
        }
        var starts = events.filter { $0.name == "meeting.started" }.map { millis($0.startTime, $0.timestamp) }
        var ends = events.filter { $0.name == "meeting.ended" }.map { millis($0.endTime, $0.timestamp) }
        // A visit whose webhooks never said when it started or ended: the report's meeting data does.
        if starts.isEmpty { starts = reports.compactMap(\.meetingStart).map { $0 * 1_000 } }
        if ends.isEmpty { ends = reports.compactMap(\.meetingEnd).map { $0 * 1_000 } }
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
        var instants: [Int64] = []
        for event in events {
            instants.append(event.timestamp)
            for iso in [event.joinTime, event.leaveTime, event.startTime, event.endTime] {
                if let ms = iso.flatMap(RFC3339.epochMilliseconds) { instants.append(ms) }
            }
        }
        if let first = instants.min(), let last = instants.max() {
            span = (Self.seconds(first), Self.seconds(last))
        }

        // Join/leave intervals per participant; a participant may leave and rejoin.
        struct Edge {
            var at: Int64
            var join: Bool
            var name: String?
            var email: String?
        }
        var edges: [ExactText: [Edge]] = [:]
        for event in events {
            guard let id = event.participantID else { continue }
            if event.name.hasSuffix("participant_joined") {
                edges[ExactText(id), default: []].append(
                    Edge(
                        at: millis(event.joinTime, event.timestamp),
                        join: true,
                        name: event.participantName,
                        email: event.participantEmail
                    )
                )
            } else if event.name.hasSuffix("participant_left") {
                edges[ExactText(id), default: []].append(
                    Edge(
                        at: millis(event.leaveTime, event.timestamp),
                        join: false,
                        name: event.participantName,
                        email: event.participantEmail
                    )
                )
            }
        }
        var intervals: [Interval] = []
        func interval(_ id: String, _ name: String?, _ email: String?, _ joined: Int64?, _ left: Int64?) -> Interval {
            Interval(
                participantID: id,
                matchID: id,
                participantName: name,
                email: email,
                joinedMs: joined,
                leftMs: left,
                source: .webhook
            )
        }
        for key in edges.keys.sorted() {
            let id = key.text
            // Same instant: the join first, so a zero-length visit is one interval; then by name and e-mail
            // (bytes), so that the same events give the same names whatever order they were stored in.
            let sorted = edges[key]!.sorted {
                ($0.at, $0.join ? 0 : 1, ExactText($0.name ?? ""), ExactText($0.email ?? ""))
                    < ($1.at, $1.join ? 0 : 1, ExactText($1.name ?? ""), ExactText($1.email ?? ""))
            }
            var open: Edge?
            for edge in sorted {
                if edge.join {
                    if open == nil { open = edge }
                } else if let started = open {
                    intervals.append(
                        interval(id, started.name ?? edge.name, started.email ?? edge.email, started.at, edge.at)
                    )
                    open = nil
                } else {
                    // A leave with no join seen: the interval's start is unknown.
                    intervals.append(interval(id, edge.name, edge.email, nil, edge.at))
                }
            }
            if let started = open { intervals.append(interval(id, started.name, started.email, started.at, nil)) }
        }

        // Report rows: one that is an interval already here (the same person, the same join second) adds
        // only what it lacks — a leave the webhooks missed, or a join to a leave seen alone; any other is
        // an interval of its own. Found through exact keys, so a visit of many rows costs linear time
        // however many join in one second.
        var byJoin = ParticipantIndex()
        var byJoinMinute = ParticipantIndex()
        // Intervals that a row given to the minute made: a row given to the second in that minute is theirs.
        var minuteMade = ParticipantIndex()
        var leaveOnly = ParticipantIndex()
        var leaveOnlyMinute = ParticipantIndex()
        func file(_ index: Int, joined: Int64) {
            let who = (intervals[index].matchID, intervals[index].email, intervals[index].participantName)
            byJoin.add(index, second: joined, who)
            byJoinMinute.add(index, second: Self.floor(joined, 60), who)
        }
        for (index, interval) in intervals.enumerated() {
            let who = (interval.matchID, interval.email, interval.participantName)
            if let joined = interval.joinedMs {
                file(index, joined: Self.seconds(joined))
            } else if let left = interval.leftMs {
                leaveOnly.add(index, second: Self.seconds(left), who)
                leaveOnlyMinute.add(index, second: Self.floor(left, 60_000), who)
            }
        }
        let ordered = reports.sorted {
            ($0.joined, $0.participantID ?? "", $0.email ?? "", $0.name ?? "", $0.left ?? -1)
                < ($1.joined, $1.participantID ?? "", $1.email ?? "", $1.name ?? "", $1.left ?? -1)
        }
        for report in ordered {
            let who = (report.participantID, report.email, report.name)
            // A row given to the minute is a join of that minute: the one that left in the same minute, else
            // one still open (a row without a leave: any). One given to the second is the join of that second,
            // or a join that a row given to the minute made in its minute — leaving in the same minute, else
            // open — whose times it then makes exact.
            let minute = Self.floor(report.joined, 60)
            let leftMinute = report.left.map { Self.floor($0, 60) }
            func leavesInMinute(_ index: Int) -> Bool {
                leftMinute != nil && intervals[index].leftMs.map { Self.floor($0, 60_000) } == leftMinute
            }
            // What a key's chain holds is checked: the same person, joining in that second or minute.
            func person(_ index: Int) -> Bool {
                sameZoomParticipant(
                    who,
                    (intervals[index].matchID, intervals[index].email, intervals[index].participantName)
                )
            }
            func joinsAt(_ index: Int) -> Bool {
                person(index) && intervals[index].joinedMs.map(Self.seconds) == report.joined
            }
            func joinsIn(_ index: Int) -> Bool {
                person(index) && intervals[index].joinedMs.map { Self.floor($0, 60_000) } == minute
            }
            func leavesIn(_ left: Int64) -> (Int) -> Bool {
                { person($0) && intervals[$0].leftMs.map { Self.floor($0, 60_000) } == Self.floor(left, 60) }
            }
            func leavesAt(_ left: Int64) -> (Int) -> Bool {
                { person($0) && intervals[$0].leftMs.map(Self.seconds) == left }
            }
            var found: Int?
            if report.toTheMinute {
                let candidates = byJoinMinute.candidates(second: minute, who, verify: joinsIn)
                found =
                    candidates.first(where: leavesInMinute) ?? candidates.first { intervals[$0].leftMs == nil }
                    ?? (report.left == nil ? candidates.first : nil)
            } else if let exact = byJoin.first(second: report.joined, who, verify: joinsAt) {
                found = exact
            } else {
                let made = minuteMade.candidates(second: minute, who, verify: joinsIn).filter {
                    intervals[$0].joinToTheMinute
                }
                if let index = made.first(where: leavesInMinute) ?? made.first(where: { intervals[$0].leftMs == nil }) {
                    intervals[index].joinedMs = report.joined * 1_000
                    intervals[index].joinToTheMinute = false
                    byJoin.add(
                        index,
                        second: report.joined,
                        (intervals[index].matchID, intervals[index].email, intervals[index].participantName)
                    )
                    found = index
                }
            }
            if let index = found {
                if let left = report.left,
                    intervals[index].leftMs == nil || (intervals[index].leaveToTheMinute && !report.toTheMinute)
                {
                    intervals[index].leftMs = left * 1_000
                    intervals[index].leaveToTheMinute = report.toTheMinute
                    if intervals[index].source == .webhook { intervals[index].source = .both }
                }
                continue
            }
            if let left = report.left,
                let index = report.toTheMinute
                    ? leaveOnlyMinute.take(second: Self.floor(left, 60), who, verify: leavesIn(left))
                    : leaveOnly.take(second: left, who, verify: leavesAt(left))
            {
                leaveOnly.markTaken(index)
                leaveOnlyMinute.markTaken(index)
                intervals[index].joinedMs = report.joined * 1_000
                intervals[index].joinToTheMinute = report.toTheMinute
                intervals[index].source = .both
                file(index, joined: report.joined)
                continue
            }
            intervals.append(
                Interval(
                    participantID: report.participantID ?? report.email ?? report.name ?? "",
                    matchID: report.participantID,
                    participantName: report.name,
                    email: report.email,
                    joinedMs: report.joined * 1_000,
                    leftMs: report.left.map { $0 * 1_000 },
                    source: .report,
                    joinToTheMinute: report.toTheMinute,
                    leaveToTheMinute: report.toTheMinute
                )
            )
            file(intervals.count - 1, joined: report.joined)
            if report.toTheMinute { minuteMade.add(intervals.count - 1, second: minute, who) }
        }
        self.intervals = intervals
    }
}

/// Intervals by second and person, for ``sameZoomParticipant``'s rule without comparing a row with every
/// interval of its second: each interval is filed under exact keys, and a row looks up only keys whose
/// every interval is the same person as it — by id when both have one, else e-mail, else name. Keys are
/// kept as their hashes (Swift's, seeded per process) in chains of one array: a visit of 130,000 rows
/// took 120 MB more as strings and arrays per key. A hash says where to look; `verify` says whether what
/// is there is the one (a collision is passed over).
struct ParticipantIndex {
    /// Per key hash: its chain's first and last entry.
    private var ends: [Int: (first: Int, last: Int)] = [:]
    /// Chains in order of filing: each entry's interval and the next entry of its chain (-1: none).
    private var entries: [(interval: Int, next: Int)] = []
    /// Per key hash, the entry where `take` looks next.
    private var cursors: [Int: Int] = [:]
    private var taken = Set<Int>()

    private static func key(_ tag: UInt8, _ second: Int64, _ value: String) -> Int {
        var hasher = Hasher()
        hasher.combine(tag)
        hasher.combine(second)
        hasher.combine(value)
        return hasher.finalize()
    }

    mutating func add(_ index: Int, second: Int64, _ who: (id: String?, email: String?, name: String?)) {
        let email = who.email?.lowercased()
        var keys: [Int] = []
        if let id = who.id { keys.append(Self.key(1, second, id)) }
        if let email {
            keys.append(Self.key(2, second, email))
            if who.id == nil { keys.append(Self.key(3, second, email)) }
        }
        if let name = who.name {
            keys.append(Self.key(4, second, name))
            if who.id == nil { keys.append(Self.key(5, second, name)) }
            if email == nil { keys.append(Self.key(6, second, name)) }
            if who.id == nil && email == nil { keys.append(Self.key(7, second, name)) }
        }
        for key in keys {
            entries.append((index, -1))
            let entry = entries.count - 1
            if let end = ends[key] {
                entries[end.last].next = entry
                ends[key] = (end.first, entry)
            } else {
                ends[key] = (entry, entry)
            }
        }
    }

    /// The keys whose every interval is the same person as `who`.
    private static func keys(_ second: Int64, _ who: (id: String?, email: String?, name: String?)) -> [Int] {
        let email = who.email?.lowercased()
        switch (who.id, email) {
        case (let id?, let email?):
            // Those with an id by it; those without, by e-mail; those with neither, by name.
            return [key(1, second, id), key(3, second, email)] + (who.name.map { [key(7, second, $0)] } ?? [])
        case (let id?, nil):
            return [key(1, second, id)] + (who.name.map { [key(5, second, $0)] } ?? [])
        case (nil, let email?):
            return [key(2, second, email)] + (who.name.map { [key(6, second, $0)] } ?? [])
        case (nil, nil):
            return who.name.map { [key(4, second, $0)] } ?? []
        }
    }

    /// The intervals filed that are the same person as `who` in `second` (and pass `verify`), in order: at
    /// most 16 (a crowd of one person's joins in one minute is looked at no further: a bounded cost).
    func candidates(
        second: Int64,
        _ who: (id: String?, email: String?, name: String?),
        verify: (Int) -> Bool
    ) -> [Int] {
        var found = Set<Int>()
        for key in Self.keys(second, who) {
            var entry = ends[key]?.first ?? -1
            var looked = 0
            while entry >= 0 && looked < 16 {
                if verify(entries[entry].interval) { found.insert(entries[entry].interval) }
                entry = entries[entry].next
                looked += 1
            }
        }
        return found.sorted().prefix(16).map { $0 }
    }

    /// The first interval filed that is the same person as `who` in `second` and passes `verify`.
    func first(second: Int64, _ who: (id: String?, email: String?, name: String?), verify: (Int) -> Bool) -> Int? {
        candidates(second: second, who, verify: verify).first
    }

    /// As ``first(second:_:verify:)`` among intervals not taken yet, and takes it. Each entry is passed
    /// over at most once: linear in all.
    mutating func take(
        second: Int64,
        _ who: (id: String?, email: String?, name: String?),
        verify: (Int) -> Bool
    ) -> Int? {
        var best: Int?
        for key in Self.keys(second, who) {
            var entry = cursors[key] ?? ends[key]?.first ?? -1
            while entry >= 0 && (taken.contains(entries[entry].interval) || !verify(entries[entry].interval)) {
                entry = entries[entry].next
            }
            cursors[key] = entry
            if entry >= 0, best.map({ entries[entry].interval < $0 }) ?? true { best = entries[entry].interval }
        }
        guard let best else { return nil }
        taken.insert(best)
        return best
    }

    /// Takes `index` (taken through another index of the same intervals).
    mutating func markTaken(_ index: Int) { taken.insert(index) }
}
