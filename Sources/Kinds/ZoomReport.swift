package import CSV
import Foundation
package import JSONSchema

/// How an inbox's Zoom reports write their local times: the exports carry no offset, so the zone is the
/// inbox's to say (an IANA name), with the date order and the clock of the exporting account's locale.
package struct LocalTimes: Sendable, Hashable {
    package enum DateOrder: String, Sendable, CaseIterable {
        case monthFirst = "MM/DD/YYYY"
        case dayFirst = "DD/MM/YYYY"
    }

    package enum Clock: String, Sendable, CaseIterable {
        case either
        case twelve = "12h"
        case twentyFour = "24h"
    }

    /// The IANA zone name, nil when the inbox has none configured (its reports' CSV is then rejected).
    package var zone: String?
    package var dateOrder: DateOrder
    package var clock: Clock

    package init(zone: String? = nil, dateOrder: DateOrder = .monthFirst, clock: Clock = .either) {
        self.zone = zone
        self.dateOrder = dateOrder
        self.clock = clock
    }

    /// Whether `name` is an IANA zone name this machine knows (`America/Chicago`, `UTC`): abbreviations
    /// such as `CST` are refused, they name no rule for daylight saving time.
    package static func isZoneName(_ name: String) -> Bool {
        (name.contains("/") || name == "UTC") && !name.hasPrefix("Etc/GMT+") && !name.hasPrefix("Etc/GMT-")
            && TimeZone(identifier: name) != nil
    }

    /// One line, as kept beside a claimed file and in its report: `America/Chicago MM/DD/YYYY either`.
    package var note: String { "\(zone ?? "-") \(dateOrder.rawValue) \(clock.rawValue)" }

    package init?(note: String) {
        let parts = note.split(separator: " ").map(String.init)
        guard parts.count == 3, let order = DateOrder(rawValue: parts[1]), let clock = Clock(rawValue: parts[2])
        else { return nil }
        self.init(zone: parts[0] == "-" ? nil : parts[0], dateOrder: order, clock: clock)
    }

    /// For people: `America/Chicago, MM/DD/YYYY, 12- or 24-hour clock`.
    package var summary: String {
        let hours =
            switch clock {
            case .either: "12- or 24-hour clock"
            case .twelve: "12-hour clock"
            case .twentyFour: "24-hour clock"
            }
        return "\(zone ?? "no time zone"), \(dateOrder.rawValue), \(hours)"
    }
}

/// Why a local date-time names no instant (quotes the value: never logged).
package struct TimeProblem: Error, Sendable, ExpressibleByStringInterpolation {
    package var message: String
    /// The date is no date in the inbox's order and is one in the other: the file is likely written in
    /// the other order (and its dates that fit both would be read a month off).
    package var otherOrder = false

    package init(message: String) { self.message = message }
    package init(stringLiteral value: String) { message = value }
    package init(stringInterpolation: DefaultStringInterpolation) {
        message = String(stringInterpolation: stringInterpolation)
    }
}

/// Turns a report's local date-times into instants (seconds since the epoch), as `LocalTimes` says.
package struct LocalTimeReader: Sendable {
    package let settings: LocalTimes
    private let timeZone: TimeZone?

    package init(_ settings: LocalTimes) {
        self.settings = settings
        timeZone = settings.zone.flatMap { TimeZone(identifier: $0) }
    }

    private static let months = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ]
    private static let monthNames = [
        "january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
        "november", "december",
    ]

    /// The month a word names (`Sep`, `Sept`, `September`, any case), or nil.
    private static func month(_ word: Substring) -> Int? {
        let lower = word.lowercased()
        if let index = months.firstIndex(of: lower) ?? monthNames.firstIndex(of: lower) { return index + 1 }
        return lower == "sept" ? 9 : nil
    }

    /// As ``instant(_:)``, and whether the text gave only minutes (`09:00` names a minute: matched to the
    /// webhooks' joins within it).
    package func instantAndPrecision(_ text: String) -> Result<(seconds: Int64, toTheMinute: Bool), TimeProblem> {
        let trimmed = text.trimmingASCIIWhitespace()
        let seconds =
            Self.withOffset(trimmed) != nil
            || trimmed.split(separator: " ").contains { $0.split(separator: ":").count == 3 }
        return instant(text).map { ($0, !seconds) }
    }

    /// A time written with its offset (`2026-11-01T01:30:00-05:00`, `2026-11-01 06:30:00Z`): it needs no
    /// zone, and is the way to give a time of the repeated hour.
    private static func withOffset(_ trimmed: String) -> Int64? {
        guard trimmed.count >= 20,
            let ms = RFC3339.epochMilliseconds(trimmed)
                ?? RFC3339.epochMilliseconds(trimmed.replacingOccurrences(of: " ", with: "T"))
        else { return nil }
        return ms >= 0 ? ms / 1_000 : (ms - 999) / 1_000
    }

    /// The instant `text` names in the inbox's zone, or why it names none: not a date-time as this inbox
    /// writes them, an impossible date, or a local time that daylight saving time skipped or repeated
    /// (reported, never guessed).
    package func instant(_ text: String) -> Result<Int64, TimeProblem> {
        if let at = Self.withOffset(text.trimmingASCIIWhitespace()) { return .success(at) }
        let quoted = "\"\(text)\""
        let expected =
            "\(settings.dateOrder.rawValue) hh:mm[:ss][ AM|PM], or with its offset: 2026-11-01T01:30:00-05:00"
        var date: (y: Int, m: Int, d: Int)?
        var numeric = false
        var monthName: Int?
        var bare: [Int] = []
        var time: (h: Int, m: Int, s: Int)?
        var meridiem: Bool?  // true: PM
        for token in text.split(whereSeparator: { $0 == " " || $0 == "," || $0 == "\t" }) {
            var token = Substring(token)
            let upper = token.uppercased()
            if upper == "AM" || upper == "PM" {
                guard meridiem == nil else { return .failure("\(quoted): AM/PM twice") }
                meridiem = upper == "PM"
                continue
            }
            if token.contains(":") {
                if upper.hasSuffix("AM") || upper.hasSuffix("PM") {
                    guard meridiem == nil else { return .failure("\(quoted): AM/PM twice") }
                    meridiem = upper.hasSuffix("PM")
                    token = token.dropLast(2)
                }
                let parts = token.split(separator: ":", omittingEmptySubsequences: false)
                guard time == nil, parts.count == 2 || parts.count == 3,
                    let h = Self.number(parts[0], digits: 1...2), let m = Self.number(parts[1], digits: 2...2),
                    let s = parts.count == 3 ? Self.number(parts[2], digits: 2...2) : 0
                else { return .failure("\(quoted) is not a date-time as this inbox reads them (\(expected))") }
                guard m < 60, s < 60 else { return .failure("\(quoted): no such time of day") }
                time = (h, m, s)
                continue
            }
            if let separator = token.first(where: { $0 == "/" || $0 == "-" || $0 == "." }) {
                let parts = token.split(separator: separator, omittingEmptySubsequences: false)
                guard date == nil, parts.count == 3 else {
                    return .failure("\(quoted) is not a date-time as this inbox reads them (\(expected))")
                }
                if parts[0].count == 4 {
                    guard let y = Self.number(parts[0], digits: 4...4), let m = Self.number(parts[1], digits: 1...2),
                        let d = Self.number(parts[2], digits: 1...2)
                    else { return .failure("\(quoted) is not a date-time as this inbox reads them (\(expected))") }
                    date = (y, m, d)
                } else {
                    guard let a = Self.number(parts[0], digits: 1...2), let b = Self.number(parts[1], digits: 1...2)
                    else { return .failure("\(quoted) is not a date-time as this inbox reads them (\(expected))") }
                    guard let y = Self.number(parts[2], digits: 4...4) else {
                        return .failure("\(quoted): the year must have four digits")
                    }
                    date = settings.dateOrder == .monthFirst ? (y, a, b) : (y, b, a)
                    numeric = true
                }
                continue
            }
            if let month = Self.month(token) {
                guard monthName == nil else {
                    return .failure("\(quoted) is not a date-time as this inbox reads them (\(expected))")
                }
                monthName = month
                continue
            }
            guard let n = Self.number(token, digits: 1...4) else {
                return .failure("\(quoted) is not a date-time as this inbox reads them (\(expected))")
            }
            bare.append(n)
        }
        if date == nil, let month = monthName, bare.count == 2 {
            // `Sep 11 2026` or `11 Sep 2026`: the year is the four-digit number.
            let (year, day) = bare[0] > 31 ? (bare[0], bare[1]) : (bare[1], bare[0])
            date = (year, month, day)
        } else if !bare.isEmpty || monthName != nil {
            return .failure("\(quoted) is not a date-time as this inbox reads them (\(expected))")
        }
        guard let date else { return .failure("\(quoted) has no date: a time alone names no instant") }
        guard var time else { return .failure("\(quoted) has no time of day") }
        func valid(_ y: Int, _ m: Int, _ d: Int) -> Bool {
            (1...12).contains(m) && d >= 1 && d <= RFC3339.daysIn(m, y) && y >= 1900
        }
        guard valid(date.y, date.m, date.d) else {
            guard numeric, valid(date.y, date.d, date.m) else {
                return .failure("\(quoted): no such date (\(settings.dateOrder.rawValue))")
            }
            let other: LocalTimes.DateOrder = settings.dateOrder == .monthFirst ? .dayFirst : .monthFirst
            var problem = TimeProblem(
                message:
                    "\(quoted): no such date as \(settings.dateOrder.rawValue), this inbox's date_order; it is one "
                    + "as \(other.rawValue): the export is likely written \(other.rawValue) (set the inbox's date_order)"
            )
            problem.otherOrder = true
            return .failure(problem)
        }
        switch (meridiem, settings.clock) {
        case (.some, .twentyFour):
            return .failure("\(quoted) has AM/PM, and this inbox's reports use a 24-hour clock")
        case (nil, .twelve):
            return .failure("\(quoted) has no AM/PM, and this inbox's reports use a 12-hour clock")
        case (.some(let pm), _):
            guard (1...12).contains(time.h) else { return .failure("\(quoted): no hour \(time.h) on a 12-hour clock") }
            time.h = time.h % 12 + (pm ? 12 : 0)
        case (nil, _):
            guard time.h < 24 else { return .failure("\(quoted): no such time of day") }
        }
        guard let timeZone, let zone = settings.zone else {
            return .failure("no time zone is configured for this inbox: its local times cannot be read")
        }
        let wall = Int64(RFC3339.daysFromCivil(date.y, date.m, date.d) * 86_400 + time.h * 3_600 + time.m * 60 + time.s)
        // Each offset the zone has around that wall time, kept when the instant it gives is under it: one
        // is the time; none, the hour the clocks skipped; two, the hour they repeated.
        func offset(_ at: Int64) -> Int64 {
            Int64(timeZone.secondsFromGMT(for: Date(timeIntervalSince1970: TimeInterval(at))))
        }
        let candidates = Set([offset(wall - 86_400), offset(wall), offset(wall + 86_400)])
        let instants = candidates.map { wall - $0 }.filter { offset($0) == wall - $0 }.sorted()
        switch instants.count {
        case 1:
            return .success(instants[0])
        case 0:
            return .failure(
                TimeProblem(
                    message:
                        "\(quoted) never happened in \(zone): its clocks skipped it (put forward for daylight saving "
                        + "time, or another change of offset); not guessed"
                )
            )
        default:
            return .failure(
                TimeProblem(
                    message: "\(quoted) happened twice in \(zone): its clocks were put back over it (daylight saving "
                        + "time), so which one is unknown; not guessed — write it with its offset "
                        + "(2026-11-01T01:30:00-05:00) or in UTC (…Z)"
                )
            )
        }
    }

    private static func number(_ text: Substring, digits: ClosedRange<Int>) -> Int? {
        guard digits.contains(text.count), text.allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
        return Int(text)
    }
}

/// One join of one participant, as a Zoom report lists it: a join/leave interval of a visit's timeline.
package struct ZoomReportRow: Sendable, Equatable {
    package enum Source: String, Sendable {
        case csv = "report-csv"
        case api = "report-api"
    }

    /// Digits only (`852 1848 6288` is `85218486288`); empty when only the visit's uuid is known.
    package var meetingID: String
    /// The visit (one occurrence of the meeting), when the report names it.
    package var meetingUUID: String?
    package var participantID: String?
    package var email: String?
    package var name: String?
    /// Seconds since the epoch.
    package var joined: Int64
    package var left: Int64?
    package var durationSeconds: Int?
    /// The report gave its times to the minute only (`09:00`): it is the same join as a webhook's in
    /// that minute.
    package var toTheMinute = false
    /// The meeting's start and end as the report gives them (layouts with meeting data), seconds.
    package var meetingStart: Int64?
    package var meetingEnd: Int64?
    package var source: Source

    /// Who, for the natural key (meeting, participant, join second): the id when present, else the
    /// e-mail (lowercased), else the name.
    package var participantKey: String {
        let who =
            if let participantID { "id:" + participantID } else if let email {
                "email:" + email.lowercased()
            } else { "name:" + (name ?? "") }
        // To the minute, one person may join twice in a minute: the leave tells the joins apart.
        return toTheMinute ? who + "|left:" + (left.map { String($0) } ?? "") : who
    }
}

/// Whether two sightings of a participant are one person: compared by the first of id, e-mail and name
/// that both have (a report's CSV has no ids; webhooks and the Reports API have them).
package func sameZoomParticipant(
    _ a: (id: String?, email: String?, name: String?),
    _ b: (id: String?, email: String?, name: String?)
) -> Bool {
    if let x = a.id, let y = b.id { return x == y }
    if let x = a.email, let y = b.email { return x.lowercased() == y.lowercased() }
    if let x = a.name, let y = b.name { return x == y }
    return false
}

/// A Zoom meeting id as printed (`852 1848 6288`, `852-1848-6288`) as its digits, or nil.
package func zoomMeetingDigits(_ text: String) -> String? {
    guard !text.hasPrefix("-") else { return nil }
    let digits = text.filter { !($0 == " " || $0 == "-" || $0 == "\u{A0}" || $0 == "\t") }
    guard (9...13).contains(digits.count), digits.first != "0", digits.allSatisfy({ $0.isASCII && $0.isNumber })
    else { return nil }
    return digits
}

/// The meeting id in a file name as Zoom names its exports (`participants_85218486288.csv`), or nil.
package func zoomMeetingFromFileName(_ name: String) -> String? {
    let base = name.split(separator: "/").last.map(String.init) ?? name
    guard let range = base.range(of: "participants_") else { return nil }
    let digits = base[range.upperBound...].prefix { $0.isASCII && $0.isNumber }
    return zoomMeetingDigits(String(digits))
}

/// Reads a participants report CSV record by record (whole or streamed): the three layouts told apart by
/// their headers — the meeting table, a blank line and the participant table (A); one table with the
/// meeting's columns repeated on every row (B); the participant table alone, the meeting id from the
/// file's name (C).
package struct ZoomReportCSV: Sendable {
    private enum Stage: Sendable {
        case header, meetingRow, gap, rows, done
    }

    private struct Columns: Sendable {
        var name: Int?
        var email: Int?
        var join: Int
        var leave: Int
        var duration: Int?
        var meetingID: Int?
        var start: Int?
        var end: Int?
        var width: Int
        var names: [String]
    }

    private let times: LocalTimeReader
    private let fileName: String
    private var stage = Stage.header
    private var meeting: (id: String, start: Int64?, end: Int64?)?
    private var meetingHeader: [String] = []
    private var columns: Columns?
    private var rows = 0
    /// The file as a whole cannot be read (nothing of it is stored).
    package private(set) var fileProblem: RecordProblem?
    package private(set) var notes: [String] = []
    /// The lines a `.rejected.csv` begins with, so that it can be fixed and dropped again as it is: the
    /// meeting table and its blank line when the file has them, then the participant header with `error`
    /// and `line` columns.
    package private(set) var rejectedHeader: [UInt8] = []
    /// The first date of the file that fits only the other date order: its line and text (a file read
    /// whole is then rejected: its dates that fit both orders would be read a month off).
    package private(set) var otherOrder: (line: Int, problem: String)?

    package init(times: LocalTimeReader, fileName: String) {
        self.times = times
        self.fileName = fileName
    }

    /// Whether the participant table's header has been read.
    package var hasTable: Bool { columns != nil }

    /// The row `record` is, or nil for the header lines, blank lines and anything after a file problem.
    package mutating func take(_ record: CSVRecord) -> Item<ZoomReportRow>? {
        guard fileProblem == nil else { return nil }
        switch stage {
        case .header:
            if let encoding = IntakeReader.wideEncoding(record.raw) {
                fail(record.line, "the file is \(encoding), not UTF-8: save it as UTF-8")
                return nil
            }
            guard let names = record.fields else {
                fail(record.line, "header: \(record.error ?? "unreadable")")
                return nil
            }
            let keys = names.map { $0.trimmingASCIIWhitespace().lowercased() }
            if keys.contains("join time") {
                table(record, names: names)
            } else if keys.contains("meeting id") {
                meetingHeader = keys
                rejectedHeader = record.raw + [0x0A]
                stage = .meetingRow
            } else {
                fail(
                    record.line,
                    "not a Zoom participants report: its header has neither Join Time (the participant table) nor "
                        + "Meeting ID (the meeting table)"
                )
            }
            return nil
        case .meetingRow:
            rejectedHeader += record.raw + [0x0A]
            guard let fields = record.fields, let at = meetingHeader.firstIndex(of: "meeting id"), at < fields.count
            else {
                fail(record.line, "the meeting table's row: \(record.error ?? "it has no Meeting ID")")
                return nil
            }
            guard let id = zoomMeetingDigits(fields[at]) else {
                fail(record.line, "Meeting ID: \"\(fields[at])\" is not a Zoom meeting id (9 to 13 digits)")
                return nil
            }
            func time(_ column: String) -> Int64? {
                guard let i = meetingHeader.firstIndex(of: column), i < fields.count else { return nil }
                return instant(fields[i], line: record.line)
            }
            meeting = (id, time("start time"), time("end time"))
            stage = .gap
            return nil
        case .gap:
            if record.fields == [""] {
                rejectedHeader += [0x0A]
                return nil
            }
            guard let names = record.fields,
                names.map({ $0.trimmingASCIIWhitespace().lowercased() }).contains("join time")
            else {
                fail(
                    record.line,
                    "after the meeting table, the participant table's header was expected (Name (Original Name),"
                        + "User Email,Join Time,Leave Time,Duration (Minutes))"
                )
                return nil
            }
            table(record, names: names)
            return nil
        case .rows:
            if record.fields == [""] { return nil }
            rows += 1
            return Item(
                number: rows,
                line: record.line,
                text: String(decoding: record.raw, as: UTF8.self),
                result: row(record)
            )
        case .done:
            return nil
        }
    }

    /// After the last record: a file that never reached its participant table is rejected.
    package mutating func finish() {
        guard fileProblem == nil, columns == nil else { return }
        fail(
            nil,
            stage == .header
                ? "file is empty: no header" : "the file ends before the participant table (Name (Original Name),…)"
        )
    }

    /// A meeting's time (informative: unreadable, it is left out), noting a date of the other order.
    private mutating func instant(_ text: String, line: Int) -> Int64? {
        switch times.instant(text) {
        case .success(let at): return at
        case .failure(let problem):
            if problem.otherOrder && otherOrder == nil { otherOrder = (line, problem.message) }
            return nil
        }
    }

    private mutating func fail(_ line: Int?, _ message: String) {
        fileProblem = RecordProblem(record: nil, line: line, pointer: nil, message: message)
        stage = .done
    }

    /// The participant table's header: columns found by position — in a one-table export the meeting's
    /// columns come first and the participant's after `Name (Original Name)`, and of a name that repeats
    /// (`User Email`, `Duration (Minutes)`) the participant's is the one after that column.
    private mutating func table(_ record: CSVRecord, names: [String]) {
        let keys = names.map { $0.trimmingASCIIWhitespace().lowercased() }
        let nameAt = keys.firstIndex { $0 == "name (original name)" || $0 == "name" || $0 == "participant" }
        // Only the one-table export has meeting columns before the participant's: there the participant's
        // are those after its name; elsewhere any column is the participant's, in any order.
        let from = keys[..<(nameAt ?? 0)].contains("meeting id") ? nameAt! : 0
        func find(_ key: String, after start: Int) -> Int? { keys[start...].firstIndex(of: key) }
        let email = find("user email", after: from)
        guard let join = find("join time", after: from), let leave = find("leave time", after: from) else {
            fail(
                record.line,
                "the participant table's header has no \(keys.contains("join time") ? "Leave" : "Join") Time"
            )
            return
        }
        guard nameAt != nil || email != nil else {
            fail(record.line, "the participant table's header has neither Name (Original Name) nor User Email")
            return
        }
        guard times.settings.zone != nil else {
            fail(
                record.line,
                "no time zone is configured for this inbox ([zoom_report] timezone, or its [[inbox]] timezone): the "
                    + "report's local times name no instant without one"
            )
            return
        }
        let meetingAt = keys[..<from].firstIndex(of: "meeting id")
        if meetingAt == nil && meeting == nil {
            guard let id = zoomMeetingFromFileName(fileName) else {
                fail(
                    record.line,
                    "the participant table alone names no meeting: export it with the meeting data, or name the file "
                        + "as Zoom does (participants_<meeting id>.csv)"
                )
                return
            }
            meeting = (id, nil, nil)
        }
        columns = Columns(
            name: nameAt,
            email: email,
            join: join,
            leave: leave,
            duration: find("duration (minutes)", after: from),
            meetingID: meetingAt,
            start: meetingAt == nil ? nil : keys[..<from].firstIndex(of: "start time"),
            end: meetingAt == nil ? nil : keys[..<from].firstIndex(of: "end time"),
            width: names.count,
            names: names.map { $0.trimmingASCIIWhitespace() }
        )
        rejectedHeader += record.raw + Array(",error,line\n".utf8)
        stage = .rows
    }

    private mutating func row(_ record: CSVRecord) -> Result<ZoomReportRow, Problems> {
        func problem(_ pointer: String?, _ message: String) -> Result<ZoomReportRow, Problems> {
            .failure(Problems([RecordProblem(record: rows, line: record.line, pointer: pointer, message: message)]))
        }
        guard let columns, let fields = record.fields else { return problem(nil, record.error ?? "unreadable") }
        let needed =
            [columns.name, columns.email, columns.join, columns.leave, columns.duration, columns.meetingID]
            .compactMap { $0 }.max()! + 1
        guard fields.count >= needed else {
            return problem(nil, "has \(fields.count) fields; the header has \(columns.width)")
        }
        var problems: [RecordProblem] = []
        func add(_ column: Int, _ message: String) {
            problems.append(
                RecordProblem(record: rows, line: record.line, pointer: "/" + columns.names[column], message: message)
            )
        }
        func text(_ column: Int?) -> String? {
            guard let column else { return nil }
            let value = fields[column].trimmingASCIIWhitespace()
            return value.isEmpty ? nil : value
        }
        var meetingID = meeting?.id ?? ""
        var start = meeting?.start
        var end = meeting?.end
        if let at = columns.meetingID {
            if let id = zoomMeetingDigits(fields[at]) {
                meetingID = id
            } else {
                add(at, "\"\(fields[at])\" is not a Zoom meeting id (9 to 13 digits)")
            }
            start = nil
            end = nil
            if let value = text(columns.start) { start = instant(value, line: record.line) }
            if let value = text(columns.end) { end = instant(value, line: record.line) }
        }
        var joined: Int64 = 0
        var toTheMinute = false
        if let value = text(columns.join) {
            switch times.instantAndPrecision(value) {
            case .success(let at): (joined, toTheMinute) = at
            case .failure(let problem):
                add(columns.join, problem.message)
                if problem.otherOrder && otherOrder == nil { otherOrder = (record.line, problem.message) }
            }
        } else {
            add(columns.join, "missing: every row is one join")
        }
        var left: Int64?
        if let value = text(columns.leave) {
            switch times.instantAndPrecision(value) {
            case .success(let at):
                left = at.seconds
                if problems.isEmpty && at.seconds < joined { add(columns.leave, "before Join Time") }
            case .failure(let problem): add(columns.leave, problem.message)
            }
        }
        var duration: Int?
        if let value = text(columns.duration) {
            if let minutes = Int(value), minutes >= 0, minutes < 1_000_000 {
                duration = minutes * 60
            } else {
                add(columns.duration!, "\"\(value)\" is not a whole number of minutes")
            }
        }
        let name = text(columns.name)
        let email = text(columns.email)
        if name == nil && email == nil {
            add(columns.name ?? columns.email!, "missing: a participant needs a name or an e-mail")
        }
        problems += KeyText.problems(
            [
                ("the meeting id", nil, meetingID),
                ("the name", columns.name.map { "/" + columns.names[$0] }, name),
                ("the e-mail", columns.email.map { "/" + columns.names[$0] }, email),
            ],
            record: rows,
            line: record.line
        )
        if !problems.isEmpty { return .failure(Problems(problems)) }
        var row = ZoomReportRow(
            meetingID: meetingID,
            meetingUUID: nil,
            participantID: nil,
            email: email,
            name: name,
            joined: joined,
            left: left,
            durationSeconds: duration,
            meetingStart: start,
            meetingEnd: end,
            source: .csv
        )
        row.toTheMinute = toTheMinute
        return .success(row)
    }
}

/// Reads Zoom participants reports: the CSV that Zoom's web portal exports, or the Reports API's JSON
/// (`GET /report/meetings/{meetingId}/participants`: one page, an array of pages, or NDJSON of pages).
package struct ZoomReportReader: Sendable {
    package init() {}

    /// Whether `bytes` begin like JSON (after a byte-order mark and white space).
    package static func isJSON(_ bytes: some Collection<UInt8>) -> Bool {
        let first = bytes.first { ![0x20, 0x09, 0x0A, 0x0D, 0xEF, 0xBB, 0xBF].contains($0) }
        return first == UInt8(ascii: "{") || first == UInt8(ascii: "[")
    }

    /// The whole file's rows; `rejectedHeader` set for CSV (its `.rejected.csv` begins with it).
    package func read(_ bytes: [UInt8], fileName: String, times: LocalTimeReader) -> (
        ParsedFile<ZoomReportRow>, rejectedHeader: [UInt8]?
    ) {
        if Self.isJSON(bytes) { return (readJSON(bytes, fileName: fileName), nil) }
        var csv = ZoomReportCSV(times: times, fileName: fileName)
        var reader = CSVReader(maxRecordBytes: max(bytes.count, 1))
        var items: [Item<ZoomReportRow>] = []
        reader.feed(bytes[...]) { if let item = csv.take($0) { items.append(item) } }
        reader.finish { if let item = csv.take($0) { items.append(item) } }
        csv.finish()
        if let problem = csv.fileProblem { return (ParsedFile(items: [], fileProblem: problem), nil) }
        if let mismatch = csv.otherOrder {
            // Its dates that fit both orders would be read a month off: nothing of it is stored.
            let problem = RecordProblem(
                record: nil,
                line: mismatch.line,
                pointer: nil,
                message: mismatch.problem + "; nothing of the file is stored, as its other dates would be misread"
            )
            return (ParsedFile(items: [], fileProblem: problem), nil)
        }
        var notes = csv.notes
        if items.isEmpty { notes.append("the participant table has no rows: nothing to store") }
        notes.append("local times read as \(times.settings.summary)")
        return (ParsedFile(items: items, fileProblem: nil, notes: notes), csv.rejectedHeader)
    }

    /// The Reports API's pages. Each page names its meeting beside `participants` (`meeting_id`, and/or
    /// `meeting_uuid` for one occurrence; `id`/`uuid` alike), else the file's name does
    /// (`participants_<meeting id>.json`). Times are the API's UTC date-times.
    package func readJSON(_ bytes: [UInt8], fileName: String) -> ParsedFile<ZoomReportRow> {
        let (pages, fileProblem) = JSONRecords.split(bytes)
        if let fileProblem { return ParsedFile(items: [], fileProblem: fileProblem) }
        var items: [Item<ZoomReportRow>] = []
        var waiting = 0
        var number = 0
        for page in pages {
            func pageProblem(_ message: String) {
                number += 1
                items.append(
                    Item(
                        number: number,
                        line: page.line,
                        text: page.text,
                        result: .failure(
                            Problems([RecordProblem(record: number, line: page.line, pointer: nil, message: message)])
                        )
                    )
                )
            }
            guard case .success(let value) = page.value else {
                if case .failure(let problems) = JSONRecords.value(of: page) {
                    pageProblem(problems.list.first?.message ?? "not valid JSON")
                }
                continue
            }
            guard case .object = value, case .array(let participants)? = value["participants"] else {
                pageProblem("a page is a JSON object with participants[] (the Reports API's answer)")
                continue
            }
            let uuidValue = value["meeting_uuid"] ?? value["uuid"]
            let uuid = uuidValue?.stringValue.flatMap { $0.isEmpty ? nil : $0 }
            if uuid == nil, let uuidValue, uuidValue != .null, uuidValue.stringValue == nil {
                pageProblem("meeting_uuid: must be a string (the visit's uuid)")
                continue
            }
            var meetingID: String?
            if let id = value["meeting_id"] ?? value["id"] {
                switch id {
                case .number(let text) where !text.hasPrefix("-"): meetingID = zoomMeetingDigits(text)
                case .string(let text): meetingID = zoomMeetingDigits(text)
                default: break
                }
                if meetingID == nil {
                    pageProblem("meeting_id: not a Zoom meeting id (9 to 13 digits)")
                    continue
                }
            }
            meetingID = meetingID ?? zoomMeetingFromFileName(fileName)
            guard meetingID != nil || uuid != nil else {
                pageProblem(
                    "the page names no meeting: put meeting_id (or meeting_uuid) beside participants, or name the "
                        + "file participants_<meeting id>.json"
                )
                continue
            }
            var envelope: [JSONMember] = []
            if let meetingID { envelope.append(JSONMember(key: "meeting_id", value: .string(meetingID))) }
            if let uuid { envelope.append(JSONMember(key: "meeting_uuid", value: .string(uuid))) }
            for (index, participant) in participants.enumerated() {
                if participant["status"]?.stringValue == "in_waiting_room" {
                    waiting += 1
                    continue
                }
                number += 1
                // Rejected, a participant is written as a page of its own, with its meeting: dropped again
                // as it is, it is read the same way.
                let text = JSONValue.object(envelope + [JSONMember(key: "participants", value: .array([participant]))])
                    .compactText
                let pointer =
                    (pages.count > 1 || page.text.first == "[" ? "/\(page.number - 1)" : "")
                    + "/participants/\(index)"
                items.append(
                    Item(
                        number: number,
                        line: page.line,
                        text: text,
                        result: Self.participant(
                            participant,
                            meetingID: meetingID ?? "",
                            uuid: uuid,
                            pointer: pointer,
                            number: number,
                            line: page.line
                        )
                    )
                )
            }
        }
        var notes: [String] = []
        if waiting > 0 {
            notes.append("\(waiting) waiting-room row(s) skipped (status in_waiting_room): not in the meeting")
        }
        if items.isEmpty { notes.append("no participants: nothing to store") }
        return ParsedFile(items: items, fileProblem: nil, notes: notes)
    }

    private static func participant(
        _ value: JSONValue,
        meetingID: String,
        uuid: String?,
        pointer: String,
        number: Int,
        line: Int
    ) -> Result<ZoomReportRow, Problems> {
        var problems: [RecordProblem] = []
        func add(_ field: String, _ message: String) {
            problems.append(
                RecordProblem(
                    record: number,
                    line: line,
                    pointer: pointer + (field.isEmpty ? "" : "/" + field),
                    message: message
                )
            )
        }
        guard case .object = value else {
            add("", "a participant is a JSON object")
            return .failure(Problems(problems))
        }
        func text(_ field: String) -> String? {
            switch value[field] {
            case .string(let s): return s.isEmpty ? nil : s
            case .number(let n) where field != "name" && field != "user_email": return n
            case nil, .null?: return nil
            default:
                add(field, "must be a string")
                return nil
            }
        }
        func time(_ field: String, required: Bool) -> Int64? {
            guard let raw = text(field) else {
                if required { add(field, "missing: every row is one join") }
                return nil
            }
            guard let ms = RFC3339.epochMilliseconds(raw) else {
                add(field, "\"\(raw)\" is not an RFC 3339 date-time (the Reports API writes 2026-03-08T15:04:05Z)")
                return nil
            }
            return ms >= 0 ? ms / 1_000 : (ms - 999) / 1_000
        }
        let id = text("user_id") ?? text("id") ?? text("participant_user_id")
        let name = text("name")
        let email = text("user_email")
        let joined = time("join_time", required: true)
        let left = time("leave_time", required: false)
        var duration: Int?
        if let raw = value["duration"], raw != .null {
            if case .number(let n) = raw, let seconds = Int(n), seconds >= 0 {
                duration = seconds
            } else {
                add("duration", "must be a whole number of seconds")
            }
        }
        if let joined, let left, left < joined { add("leave_time", "before join_time") }
        if id == nil && name == nil && email == nil {
            add("", "a participant needs an id, a user_email or a name")
        }
        let idField = ["user_id", "id", "participant_user_id"].first { field in
            switch value[field] {
            case .string(let s): !s.isEmpty
            case .number: true
            default: false
            }
        }
        problems += KeyText.problems(
            [
                ("the meeting id", nil, meetingID), ("meeting_uuid", nil, uuid),
                ("the participant id", idField.map { pointer + "/" + $0 }, id),
                ("name", pointer + "/name", name), ("user_email", pointer + "/user_email", email),
            ],
            record: number,
            line: line
        )
        if !problems.isEmpty { return .failure(Problems(problems)) }
        return .success(
            ZoomReportRow(
                meetingID: meetingID,
                meetingUUID: uuid,
                participantID: id,
                email: email,
                name: name,
                joined: joined!,
                left: left,
                durationSeconds: duration,
                meetingStart: nil,
                meetingEnd: nil,
                source: .api
            )
        )
    }
}
