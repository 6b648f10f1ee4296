// RFC 3339 date and date-time, as JSON Schema's `format` keyword asserts them.

/// RFC 3339 `full-date` and `date-time` checks, and a normalised UTC form that sorts by instant.
package enum RFC3339 {
    /// A valid `date-time` as a UTC string `YYYY-MM-DDTHH:MM:SS.fffffffffZ` (nine fraction digits, more
    /// only if the source had more), or nil when `text` is not an RFC 3339 date-time with an offset.
    package static func normalizedDateTime(_ text: String) -> String? {
        let b = Array(text.utf8)
        // full-date "T" partial-time time-offset; shortest is "YYYY-MM-DDTHH:MM:SSZ" (20 bytes).
        guard b.count >= 20, let (year, month, day) = fullDate(b, 0) else { return nil }
        guard b[10] == UInt8(ascii: "T") || b[10] == UInt8(ascii: "t") else { return nil }
        guard let hour = digits(b, 11, 2), b[13] == UInt8(ascii: ":"), let minute = digits(b, 14, 2),
            b[16] == UInt8(ascii: ":"), let second = digits(b, 17, 2)
        else { return nil }
        guard hour <= 23, minute <= 59, second <= 60 else { return nil }
        var i = 19
        var fraction: [UInt8] = []
        if i < b.count, b[i] == UInt8(ascii: ".") {
            i += 1
            while i < b.count, b[i] >= 0x30, b[i] <= 0x39 {
                fraction.append(b[i])
                i += 1
            }
            guard !fraction.isEmpty else { return nil }
        }
        guard i < b.count else { return nil }
        var offsetMinutes = 0
        if b[i] == UInt8(ascii: "Z") || b[i] == UInt8(ascii: "z") {
            i += 1
        } else if b[i] == UInt8(ascii: "+") || b[i] == UInt8(ascii: "-") {
            let sign = b[i] == UInt8(ascii: "-") ? -1 : 1
            guard i + 6 == b.count, let oh = digits(b, i + 1, 2), b[i + 3] == UInt8(ascii: ":"),
                let om = digits(b, i + 4, 2), oh <= 23, om <= 59
            else { return nil }
            offsetMinutes = sign * (oh * 60 + om)
            i += 6
        } else {
            return nil
        }
        guard i == b.count else { return nil }
        // Seconds since the epoch of the UTC instant.
        var utc = daysFromCivil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 - offsetMinutes * 60
        if second == 60 {
            // A leap second exists only at 23:59:60 UTC.
            let secondOfDay = ((utc % 86_400) + 86_400) % 86_400
            guard secondOfDay == 23 * 3_600 + 59 * 60 else { return nil }
            utc += 59
        } else {
            utc += second
        }
        let days = utc >= 0 ? utc / 86_400 : (utc - 86_399) / 86_400
        let secondOfDay = utc - days * 86_400
        let (y, m, d) = civilFromDays(days)
        guard y >= 0, y <= 9999 else { return nil }
        while fraction.count < 9 { fraction.append(0x30) }
        let s = second == 60 ? 60 : secondOfDay % 60
        return pad(y, 4) + "-" + pad(m, 2) + "-" + pad(d, 2) + "T" + pad(secondOfDay / 3_600, 2) + ":"
            + pad(secondOfDay % 3_600 / 60, 2) + ":" + pad(s, 2) + "." + String(decoding: fraction, as: UTF8.self)
            + "Z"
    }

    /// Milliseconds since the epoch of a valid date-time (a leap second counts as :59.999), or nil.
    package static func epochMilliseconds(_ text: String) -> Int64? {
        guard let utc = normalizedDateTime(text) else { return nil }
        let b = Array(utc.utf8)
        func n(_ at: Int, _ count: Int) -> Int {
            var v = 0
            for k in at..<(at + count) { v = v * 10 + Int(b[k] - 0x30) }
            return v
        }
        let second = n(17, 2)
        let days = daysFromCivil(n(0, 4), n(5, 2), n(8, 2))
        let millis = second == 60 ? 999 : n(20, 3)
        let seconds = days * 86_400 + n(11, 2) * 3_600 + n(14, 2) * 60 + min(second, 59)
        return Int64(seconds) * 1_000 + Int64(millis)
    }

    /// `YYYY-MM-DDTHH:MM:SS.mmmZ` for milliseconds since the epoch.
    package static func format(epochMilliseconds value: Int64) -> String {
        let millis = Int(((value % 1_000) + 1_000) % 1_000)
        let total = Int((value - Int64(millis)) / 1_000)
        let days = total >= 0 ? total / 86_400 : (total - 86_399) / 86_400
        let secondOfDay = total - days * 86_400
        let (y, m, d) = civilFromDays(days)
        return pad(y, 4) + "-" + pad(m, 2) + "-" + pad(d, 2) + "T" + pad(secondOfDay / 3_600, 2) + ":"
            + pad(secondOfDay % 3_600 / 60, 2) + ":" + pad(secondOfDay % 60, 2) + "." + pad(millis, 3) + "Z"
    }

    /// Whether `text` is an RFC 3339 date-time with an offset.
    package static func isDateTime(_ text: String) -> Bool { normalizedDateTime(text) != nil }

    /// Whether `text` is an RFC 3339 `full-date` (YYYY-MM-DD, a real calendar day).
    package static func isDate(_ text: String) -> Bool {
        let b = Array(text.utf8)
        return b.count == 10 && fullDate(b, 0) != nil
    }

    private static func fullDate(_ b: [UInt8], _ at: Int) -> (Int, Int, Int)? {
        guard b.count >= at + 10, let year = digits(b, at, 4), b[at + 4] == UInt8(ascii: "-"),
            let month = digits(b, at + 5, 2), b[at + 7] == UInt8(ascii: "-"), let day = digits(b, at + 8, 2)
        else { return nil }
        guard month >= 1, month <= 12, day >= 1, day <= daysIn(month, year) else { return nil }
        return (year, month, day)
    }

    private static func digits(_ b: [UInt8], _ at: Int, _ count: Int) -> Int? {
        guard at + count <= b.count else { return nil }
        var value = 0
        for k in at..<(at + count) {
            let byte = b[k]
            guard byte >= 0x30, byte <= 0x39 else { return nil }
            value = value * 10 + Int(byte - 0x30)
        }
        return value
    }

    package static func daysIn(_ month: Int, _ year: Int) -> Int {
        switch month {
        case 2: (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28
        case 4, 6, 9, 11: 30
        default: 31
        }
    }

    private static func pad(_ value: Int, _ width: Int) -> String {
        let s = String(value)
        return s.count >= width ? s : String(repeating: "0", count: width - s.count) + s
    }

    // Howard Hinnant's days_from_civil / civil_from_days.
    package static func daysFromCivil(_ year: Int, _ month: Int, _ day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let doy = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    private static func civilFromDays(_ days: Int) -> (Int, Int, Int) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        return (yoe + era * 400 + (m <= 2 ? 1 : 0), m, d)
    }
}
