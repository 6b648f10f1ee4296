import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The door's memory budget: bytes of request bodies held at once, counted as each part arrives and
/// given back when the request is answered. Two pools, so that senders who have not proved who they are
/// cannot take what proven ones need: bodies of requests whose credential was checked before the body
/// (a bearer token, an opened route) share `verified`; bodies read before their signature can be checked
/// (the Zoom route, Standard Webhooks routes) share `unverified`, and one client address holds at most
/// `perAddress` of it. A route's body limit is capped to its pool (``limit(_:)``), so a request alone in
/// its pool always fits.
package final class BodyBudget: Sendable {
    package let verified: Int
    package let unverified: Int
    package let perAddress: Int
    private struct State {
        var verified = 0
        var unverified = 0
        var byAddress: [String: Int] = [:]
    }
    private let state = Mutex(State())

    /// Pools sized from the door's share of the memory budget (a quarter of it): all of it for verified
    /// senders, half as much again for unverified ones, an eighth of that per address.
    package init(share: Int) {
        verified = share
        unverified = share / 2
        perAddress = max(1, share / 16)
    }

    /// The most one request's body may be in its pool: a larger one could never fit (413, not 503).
    package func limit(verifiedFirst: Bool) -> Int { verifiedFirst ? verified : perAddress }

    /// One request's share.
    package final class Holding: Sendable {
        private let budget: BodyBudget
        /// nil: a verified sender; else the client address of an unverified one.
        private let address: String?
        private let mine = Mutex(0)

        fileprivate init(_ budget: BodyBudget, address: String?) {
            self.budget = budget
            self.address = address
        }

        /// Takes `bytes` more; false when they do not fit beside what others hold in its pool.
        package func take(_ bytes: Int) -> Bool {
            mine.withLock { mine in
                let fits = budget.state.withLock { state in
                    if let address {
                        let fromAddress = state.byAddress[address, default: 0]
                        guard state.unverified + bytes <= budget.unverified, fromAddress + bytes <= budget.perAddress
                        else { return false }
                        state.unverified += bytes
                        state.byAddress[address] = fromAddress + bytes
                    } else {
                        guard state.verified + bytes <= budget.verified else { return false }
                        state.verified += bytes
                    }
                    return true
                }
                if fits { mine += bytes }
                return fits
            }
        }

        /// Gives back everything this request took.
        package func release() {
            mine.withLock { mine in
                guard mine > 0 else { return }
                budget.state.withLock { state in
                    if let address {
                        state.unverified -= mine
                        let left = state.byAddress[address, default: 0] - mine
                        state.byAddress[address] = left > 0 ? left : nil
                    } else {
                        state.verified -= mine
                    }
                }
                mine = 0
            }
        }
    }

    /// A holding for a request whose credential was checked before its body (`address` nil), or for an
    /// unverified one from `address`.
    package func holding(unverifiedFrom address: String?) -> Holding { Holding(self, address: address) }

    /// The key a client address is capped by: an IPv6 address by its /64 (a sender holds a whole /64, one
    /// host's worth), any other as it is.
    package static func addressKey(_ address: String) -> String {
        var bytes = [UInt8](repeating: 0, count: 16)
        guard address.contains(":"), inet_pton(AF_INET6, address, &bytes) == 1 else { return address }
        return bytes[0..<8].map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined() + "/64"
    }

    /// Bytes held now in both pools.
    package var current: Int { state.withLock { $0.verified + $0.unverified } }
}
