import Synchronization

/// Per-sender token buckets: `rate` requests a second on average, bursts up to `burst`.
package final class RateLimiter: Sendable {
    private let rate: Double
    private let burst: Double
    private let buckets = Mutex<[String: (tokens: Double, at: ContinuousClock.Instant)]>([:])

    package init(rate: Double, burst: Double) {
        self.rate = rate
        self.burst = max(1, burst)
    }

    /// Takes one token from `key`'s bucket; nil when allowed, else the whole seconds until one is free.
    package func take(_ key: String, now: ContinuousClock.Instant = .now) -> Int? {
        buckets.withLock { buckets in
            var bucket = buckets[key] ?? (burst, now)
            let elapsed = now - bucket.at
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            bucket.tokens = min(burst, bucket.tokens + seconds * rate)
            bucket.at = now
            if bucket.tokens >= 1 {
                bucket.tokens -= 1
                buckets[key] = bucket
                return nil
            }
            buckets[key] = bucket
            // At most a day: a tiny configured rate would otherwise overflow the conversion (a trap).
            return max(1, Int(min(86_400, ((1 - bucket.tokens) / rate).rounded(.up))))
        }
    }
}
