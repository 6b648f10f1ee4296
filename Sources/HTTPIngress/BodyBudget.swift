import Synchronization

/// The door's memory budget: bytes of request bodies held at once. A request takes from it as its body
/// arrives and gives everything back when it is answered. A part fits while the sum stays within the
/// budget — and always when nothing but that request's own body is held, so one request as large as
/// its route allows is never refused for memory.
final class BodyBudget: Sendable {
    private let budget: Int
    private let held = Mutex(0)

    init(_ budget: Int) { self.budget = budget }

    /// One request's share.
    final class Holding: Sendable {
        private let budget: BodyBudget
        private let mine = Mutex(0)

        fileprivate init(_ budget: BodyBudget) { self.budget = budget }

        /// Takes `bytes` more; false when they do not fit beside what other requests hold.
        func take(_ bytes: Int) -> Bool {
            mine.withLock { mine in
                let fits = budget.held.withLock { held in
                    guard held == mine || held + bytes <= budget.budget else { return false }
                    held += bytes
                    return true
                }
                if fits { mine += bytes }
                return fits
            }
        }

        /// Gives back everything this request took.
        func release() {
            mine.withLock { mine in
                budget.held.withLock { $0 -= mine }
                mine = 0
            }
        }
    }

    func holding() -> Holding { Holding(self) }

    /// Bytes held now.
    var current: Int { held.withLock { $0 } }
}
