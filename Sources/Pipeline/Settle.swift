package import Spool

/// Which inbox entries are ready to be claimed: the arrival, close-grace, settle and open-hold rules as a
/// state machine of its own, with no file system (its tests feed it entries and clocks).
///
/// Every entry is keyed by its folder's path and its name's exact bytes (``Key``), never by a Swift
/// `String`: two names that are canonically equivalent (the NFC and NFD forms of "é") are equal Strings,
/// and keyed by String each would hide the other for ever. An entry that nobody holds open is ready when
/// - it is not a regular file (it goes to failed/ unread), or inotify saw it renamed in;
/// - it was written in place under its name (inotify saw it closed after writing) and has stayed closed
///   and unchanged — size, mtime, ctime, inode — for `closeGrace` by our clock: `rsync --inplace` sets the
///   times and mode of the final name after closing it, and must still find it. In an inbox with
///   ``Spool/Arrival/rename`` such a file is never ready: it is its writer's until renamed in;
/// - (``Spool/Arrival/rename`` only) it was created under its name by a link — created, never opened and
///   written — and has stayed unchanged for `closeGrace`;
/// - else, arrival unknown (found by a rescan: after a restart or an inotify overflow), when it has held
///   still for `settle` (by its mtime, or by our clock when its mtime is in the future). In an inbox with
///   ``Spool/Arrival/rename`` only if its ctime is later than its mtime (renamed, linked or given times
///   after its last write; a killed upload's file is not); the others wait for a rename.
///
/// Held open, an entry is ready once it has held still for `openHold` (a writer that never closes cannot
/// hold it for ever) — except, in a rename-only inbox, one created under its name: a writer's.
package struct SettleTracker: Sendable {
    /// A folder's path bytes, "/", and a name's bytes.
    package typealias Key = [UInt8]

    package struct Observation: Sendable, Equatable {
        var size: Int64
        var mtime: Int64
        var ctime: Int64
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
        /// Written in place in a rename-only inbox: left for its writer.
        case writtenInPlace(Key)
        /// In a rename-only inbox, found with no arrival seen and not changed since its last write: waits
        /// for a rename.
        case arrivalUnknown(Key)
    }

    package var settle: Int64
    package var openHold: Int64
    package var closeGrace: Int64
    /// Entries renamed in: claimed without waiting.
    private(set) var renamed: Set<Key> = []
    /// Entries closed after writing under their name: written in place.
    private(set) var closed: Set<Key> = []
    /// Entries created under their name (an open for writing, or a link).
    private(set) var created: Set<Key> = []
    /// Last observation of each unsettled entry.
    private(set) var observed: [Key: Observation] = [:]
    /// Entries held open (opens minus closes, by inotify).
    private(set) var openCount: [Key: Int] = [:]
    /// Entries whose wait was already said in the log.
    private var logged: Set<Key> = []

    /// - Parameters: `settle`, `openHold` and `closeGrace` in nanoseconds.
    package init(settle: Int64, openHold: Int64, closeGrace: Int64 = 0) {
        self.settle = settle
        self.openHold = openHold
        self.closeGrace = closeGrace
    }

    package static func key(folder: String, name: [UInt8]) -> Key { Array(folder.utf8) + [0x2F] + name }

    /// Takes in a wake-up's inotify hints. After an overflow the open counts may be wrong: they are dropped
    /// and files settle by size and time; a create whose write-close may have been lost is no longer taken
    /// for a link.
    package mutating func absorb(
        renamed: Set<Key> = [],
        closed: Set<Key> = [],
        created: Set<Key> = [],
        opened: [Key: Int],
        overflow: Bool
    ) {
        self.renamed.formUnion(renamed)
        self.closed.formUnion(closed)
        self.created.formUnion(created)
        if overflow {
            openCount.removeAll()
            self.created.removeAll()
        }
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

    /// Looks at a scan of `folder`, an inbox whose files arrive as `arrival` says; returns the entries
    /// ready to claim, and what to log. `fullEntry` gives an entry's size, mtime and ctime when the scan
    /// did not (-1): nil when it is gone.
    package mutating func scan(
        folder: String,
        arrival: Spool.Arrival = .close,
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
            let isRenamed = renamed.contains(key)
            if entry.type != .regular || (isRenamed && !isOpen) {
                ready.append(entry)
                continue
            }
            // How it arrived, when inotify saw it: a rename wins over a write-close (a file replaced by a
            // rename onto its name); a create with no write-close is a link (in a rename-only inbox).
            let inPlace = !isRenamed && closed.contains(key)
            let linked = !isRenamed && !inPlace && created.contains(key)
            if arrival == .rename && inPlace {
                observed[key] = nil
                if logged.insert(key).inserted { events.append(.writtenInPlace(key)) }
                continue
            }
            if entry.size < 0 || (arrival == .rename && entry.ctime < 0) {
                guard let full = fullEntry(entry) else { continue }
                entry = full
            }
            if arrival == .rename && !isRenamed && !linked && entry.ctime <= entry.mtime {
                observed[key] = nil
                if logged.insert(key).inserted { events.append(.arrivalUnknown(key)) }
                continue
            }
            guard let before = observed[key], before.size == entry.size, before.mtime == entry.mtime,
                before.ctime == entry.ctime, before.inode == entry.inode
            else {
                observed[key] = Observation(
                    size: entry.size,
                    mtime: entry.mtime,
                    ctime: entry.ctime,
                    inode: entry.inode,
                    since: now
                )
                // No grace: a file written in place is ready as soon as it is closed.
                if !isOpen && closeGrace <= 0 && (inPlace || (arrival == .rename && linked)) { ready.append(entry) }
                continue
            }
            let held = now - before.since
            if isOpen {
                // A rename-only inbox's file created under its name and open: its writer's, however long.
                if arrival == .rename && linked { continue }
                if held >= settle && logged.insert(key).inserted { events.append(.heldOpen(key)) }
                if held >= max(settle, openHold) {
                    events.append(.claimedWhileOpen(key, held: held))
                    ready.append(entry)
                }
                continue
            }
            // Written in place (or linked in): closed and unchanged for the grace, by our clock only — its
            // mtime may be any time its writer chose (`rsync -a` keeps the sender's).
            if inPlace || (arrival == .rename && linked) {
                if held >= closeGrace { ready.append(entry) }
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
        logged = logged.filter(kept)
        renamed = renamed.filter(kept)
        closed = closed.filter(kept)
        created = created.filter(kept)
        return (ready, events)
    }

    /// Whether `key` names an entry directly in the folder whose path bytes and "/" are `prefix` (not in a
    /// folder below it, which may be another inbox).
    static func isEntry(_ key: Key, of prefix: [UInt8]) -> Bool {
        key.starts(with: prefix) && !key[prefix.count...].contains(0x2F)
    }

    /// Forgets `key`: it was claimed (or found unclaimable).
    package mutating func forget(_ key: Key) {
        renamed.remove(key)
        closed.remove(key)
        created.remove(key)
        observed[key] = nil
        openCount[key] = nil
        logged.remove(key)
    }
}
