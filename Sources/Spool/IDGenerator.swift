import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Time-ordered unique ids: UUIDv7 (RFC 9562) in lowercase text, so that names sort by claim time.
/// Monotonic within a process: ids made in the same millisecond count up in the random field.
package final class IDGenerator: Sendable {
    private let state = Mutex<(millis: UInt64, counter: UInt64)>((0, 0))

    package init() {}

    package func next() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let now = UInt64(ts.tv_sec) * 1_000 + UInt64(ts.tv_nsec) / 1_000_000
        let (millis, counter) = state.withLock { state -> (UInt64, UInt64) in
            if now > state.millis {
                state = (now, UInt64.random(in: 0..<(1 << 40)))
            } else {
                state.counter += 1
            }
            return state
        }
        // 48 bits time | version 7 | 12 bits counter high | variant | 62 bits: counter low + random.
        let randA = (counter >> 28) & 0xFFF
        let high = (millis << 16) | 0x7000 | randA
        let low = (UInt64(0b10) << 62) | ((counter & 0xFFF_FFFF) << 34) | UInt64.random(in: 0..<(1 << 34))
        let hex = hex16(high) + hex16(low)
        let c = Array(hex)
        return String(c[0..<8]) + "-" + String(c[8..<12]) + "-" + String(c[12..<16]) + "-" + String(c[16..<20]) + "-"
            + String(c[20..<32])
    }

    private func hex16(_ value: UInt64) -> String {
        let s = String(value, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }
}
