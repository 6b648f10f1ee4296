import Spool
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Refuses new requests (503) while an inbox is over its high-water mark or the spool's filesystem is
/// below its free-space reserve. Counts are refreshed at most every 500 ms, so a deep inbox is not
/// listed once per request.
final class Backpressure: Sendable {
    private let spool: Spool
    private let highWater: Int
    private let reserve: Int64
    private let cache = Mutex<[String: (count: Int, at: ContinuousClock.Instant)]>([:])

    init(spool: Spool, highWater: Int, reserve: Int64) {
        self.spool = spool
        self.highWater = highWater
        self.reserve = reserve
    }

    /// Why `inbox` takes no request now, or nil.
    func refusal(_ inbox: Spool.Inbox) -> String? {
        var st = statvfs()
        if statvfs(spool.root, &st) == 0 {
            let free = Int64(st.f_bavail) * Int64(st.f_frsize)
            if free < reserve { return "the spool's disk is nearly full; retry later" }
        }
        let now = ContinuousClock.now
        let count = cache.withLock { cached -> Int in
            if let entry = cached[inbox.path], now - entry.at < .milliseconds(500) { return entry.count }
            let fresh = (try? spool.pendingCount(inbox.path)) ?? 0
            cached[inbox.path] = (fresh, now)
            return fresh
        }
        return count >= highWater ? "the \(inbox.kind) inbox holds \(count) files; retry later" : nil
    }
}
