// Clock: the monotonic clock for intervals and timers, the wall clock for file times and timestamps.

#if canImport(Glibc)
    import Glibc
#endif

/// Clock helpers.
package enum Clock {
    /// For intervals and timers: CLOCK_MONOTONIC, which a wall-clock step (NTP, an operator's `date -s`)
    /// does not move.
    package static func monotonicNanos() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }

    /// The wall clock: for file times and timestamps only.
    package static func nowNanos() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }

    /// UTC `yyyy-mm-ddThh:mm:ss.sssZ`.
    package static func timestamp() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var t = ts.tv_sec
        var parts = tm()
        gmtime_r(&t, &parts)
        func pad(_ v: Int32, _ w: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, w - s.count)) + s
        }
        return pad(parts.tm_year + 1900, 4) + "-" + pad(parts.tm_mon + 1, 2) + "-" + pad(parts.tm_mday, 2) + "T"
            + pad(parts.tm_hour, 2) + ":" + pad(parts.tm_min, 2) + ":" + pad(parts.tm_sec, 2) + "."
            + pad(Int32(ts.tv_nsec / 1_000_000), 3) + "Z"
    }
}

extension Duration {
    /// In nanoseconds, for arithmetic with ``Clock/monotonicNanos()``. Saturated at Int64.max (the
    /// settings are bounded well below it; this is the second line).
    package var nanoseconds: Int64 {
        let (whole, overflow) = components.seconds.multipliedReportingOverflow(by: 1_000_000_000)
        return overflow ? Int64.max : whole.addingReportingOverflow(components.attoseconds / 1_000_000_000).partialValue
    }
}
