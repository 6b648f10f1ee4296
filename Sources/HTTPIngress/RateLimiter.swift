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

    /// Most buckets kept: past it, the buckets that have refilled (they say nothing a new one would not)
    /// are dropped, so that senders with ever new keys (client addresses) cannot grow memory without end.
    package static let maxBuckets = 65_536

    /// How many buckets are kept (at most ``maxBuckets``).
    package var count: Int { buckets.withLock { $0.count } }

    /// Whether `key`'s bucket is empty, without taking from it: nil when a token is there, else the whole
    /// seconds until one is.
    package func exhausted(_ key: String, now: ContinuousClock.Instant = .now) -> Int? {
        buckets.withLock { buckets in
            guard let bucket = buckets[key] else { return nil }
            let tokens = min(burst, bucket.tokens + Self.seconds(now - bucket.at) * rate)
            return tokens >= 1 ? nil : max(1, Int(min(86_400, ((1 - tokens) / rate).rounded(.up))))
        }
    }

    private static func seconds(_ elapsed: Duration) -> Double {
        Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    }

    /// Takes one token from `key`'s bucket; nil when allowed, else the whole seconds until one is free.
    package func take(_ key: String, now: ContinuousClock.Instant = .now) -> Int? {
        buckets.withLock { buckets in
            if buckets.count >= Self.maxBuckets && buckets[key] == nil {
                let (rate, burst) = (self.rate, self.burst)
                buckets = buckets.filter {
                    min(burst, $0.value.tokens + Self.seconds(now - $0.value.at) * rate) < burst
                }
                // Still half full (senders with ever new keys keep their buckets drained): start over, so
                // that a prune runs at most once per `maxBuckets / 2` new keys, never once per request.
                if buckets.count >= Self.maxBuckets / 2 { buckets.removeAll(keepingCapacity: true) }
            }
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
