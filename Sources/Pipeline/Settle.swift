package import Spool

/// Which inbox entries are ready to be claimed: the settle and open-hold rules as a state machine of its
/// own, with no file system (its tests feed it entries and clocks).
///
/// Every entry is keyed by its folder's path and its name's exact bytes (``Key``), never by a Swift
/// `String`: two names that are canonically equivalent (the NFC and NFD forms of "é") are equal Strings,
/// and keyed by String each would hide the other for ever. An entry is ready when
/// - inotify said it was closed after writing or renamed in (``absorb(complete:opened:overflow:)``) and
///   nobody holds it open; or it is not a regular file (it goes to failed/ unread);
/// - else when its size, mtime and inode have held still for `settle` (by its mtime, or by our clock when
///   its mtime is in the future), and nobody holds it open;
/// - else, held open, once it has held still for `openHold` (a writer that never closes cannot hold it for
///   ever).
package struct SettleTracker: Sendable {
    /// A folder's path bytes, "/", and a name's bytes.
    package typealias Key = [UInt8]

    package struct Observation: Sendable, Equatable {
        var size: Int64
        var mtime: Int64
        var inode: UInt64
        /// Our monotonic clock when it was first seen looking like this.
        var since: Int64
    }

    /// What the tracker wants said in the log (once each).
    package enum Event: Sendable, Equatable {
        /// Settled but still open by its writer: waiting for the close.
        case heldOpen(Key)
        /// Still open, claimed after holding still for `openHold`; how long it was held, in nanoseconds.
        case claimedWhileOpen(Key, held: Int64)
    }

    package var settle: Int64
    package var openHold: Int64
    /// Entries closed after writing or renamed in: claimed without waiting to settle.
    private(set) var complete: Set<Key> = []
    /// Last observation of each unsettled entry.
    private(set) var observed: [Key: Observation] = [:]
    /// Entries held open (opens minus closes, by inotify).
    private(set) var openCount: [Key: Int] = [:]
    /// Open entries already reported as waiting for their writer.
    private var heldLogged: Set<Key> = []

    /// - Parameters: `settle` and `openHold` in nanoseconds.
    package init(settle: Int64, openHold: Int64) {
        self.settle = settle
        self.openHold = openHold
    }

    package static func key(folder: String, name: [UInt8]) -> Key { Array(folder.utf8) + [0x2F] + name }

    /// Takes in a wake-up's inotify hints. After an overflow the open counts may be wrong: they are dropped
    /// and files settle by size and time.
    package mutating func absorb(complete: Set<Key>, opened: [Key: Int], overflow: Bool) {
        self.complete.formUnion(complete)
        if overflow { openCount.removeAll() }
        for (key, delta) in opened {
            let count = (openCount[key] ?? 0) + delta
            // Below zero: a close of an open made before the watch began.
            openCount[key] = count > 0 ? count : nil
        }
    }

    /// The folders (as path bytes) that hold unsettled entries: looked at again every wake-up.
    package var foldersToRevisit: Set<[UInt8]> {
        var folders = Set<[UInt8]>()
        for key in observed.keys {
            if let slash = key.lastIndex(of: 0x2F) { folders.insert(Array(key[..<slash])) }
        }
        return folders
    }

    /// Looks at a scan of `folder`; returns the entries ready to claim, and what to log. `fullEntry`
    /// gives an entry's size and mtime when the scan did not (-1): nil when it is gone.
    package mutating func scan(
        folder: String,
        entries: [Spool.Entry],
        now: Int64,
        wallNow: Int64,
        fullEntry: (Spool.Entry) -> Spool.Entry?
    ) -> (ready: [Spool.Entry], events: [Event]) {
        let prefix = Array(folder.utf8) + [0x2F]
        var ready: [Spool.Entry] = []
        var events: [Event] = []
        var present = Set<Key>()
        for var entry in entries {
            let key = prefix + entry.bytes
            present.insert(key)
            let isOpen = openCount[key] != nil
            if entry.type != .regular || (complete.contains(key) && !isOpen) {
                ready.append(entry)
                continue
            }
            if entry.size < 0 {
                guard let full = fullEntry(entry) else { continue }
                entry = full
            }
            guard let before = observed[key], before.size == entry.size, before.mtime == entry.mtime,
                before.inode == entry.inode
            else {
                observed[key] = Observation(size: entry.size, mtime: entry.mtime, inode: entry.inode, since: now)
                continue
            }
            let held = now - before.since
            if isOpen {
                if held >= settle && heldLogged.insert(key).inserted { events.append(.heldOpen(key)) }
                if held >= max(settle, openHold) {
                    events.append(.claimedWhileOpen(key, held: held))
                    ready.append(entry)
                }
                continue
            }
            // Settled: unchanged for the settle interval, by its mtime or by our own clock — an mtime in
            // the future (a sender's clock, `rsync -t`) must not keep a file waiting until then.
            let (age, overflow) = wallNow.subtractingReportingOverflow(entry.mtime)
            if (!overflow && age >= settle) || held >= settle { ready.append(entry) }
        }
        // Forget what vanished from this folder.
        func kept(_ key: Key) -> Bool { present.contains(key) || !Self.isEntry(key, of: prefix) }
        observed = observed.filter { kept($0.key) }
        openCount = openCount.filter { kept($0.key) }
        heldLogged = heldLogged.filter(kept)
        complete = complete.filter(kept)
        return (ready, events)
    }

    /// Whether `key` names an entry directly in the folder whose path bytes and "/" are `prefix` (not in a
    /// folder below it, which may be another inbox).
    static func isEntry(_ key: Key, of prefix: [UInt8]) -> Bool {
        key.starts(with: prefix) && !key[prefix.count...].contains(0x2F)
    }

    /// Forgets `key`: it was claimed (or found unclaimable).
    package mutating func forget(_ key: Key) {
        complete.remove(key)
        observed[key] = nil
        openCount[key] = nil
        heldLogged.remove(key)
    }
}
