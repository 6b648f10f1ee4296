package import Spool

/// Which inbox entries are ready to be claimed: the arrival, close-grace, settle and open-hold rules as a
/// state machine of its own, with no file system (its tests feed it entries and clocks).
///
/// Every entry is keyed by its folder's path and its name's exact bytes (``Key``), never by a Swift
/// `String`: two names that are canonically equivalent (the NFC and NFD forms of "é") are equal Strings,
/// and keyed by String each would hide the other for ever. How an entry arrived is the last of inotify's
/// events for it (``Spool/ArrivalHint``): a file renamed in and then rewritten in place was written in
/// place. An entry that nobody holds open is ready when
/// - it is not a regular file (it goes to failed/ unread), or it was renamed in;
/// - it was written in place under its name (closed after writing) and has stayed closed and unchanged —
///   size, mtime, ctime, inode — for `closeGrace` by our clock since its last close: `rsync --inplace`
///   sets the times and mode of the final name after closing it, and must still find it. In an inbox
///   with ``Spool/Arrival/rename`` such a file is never ready: it is its writer's until renamed in, and
///   it is remembered across restarts (``inPlaceRecords()``, by inode, size and times; no names);
/// - (``Spool/Arrival/rename`` only) it was created under its name by a link — created, never written
///   and closed — and has stayed unchanged for `closeGrace`;
/// - else, arrival unknown (found by a rescan: after a restart or an inotify overflow), when it has held
///   still for `settle` (by its mtime, or by our clock when its mtime is in the future).
///
/// Held open, an entry is ready once it has held still for `openHold` (a writer that never closes cannot
/// hold it for ever) — except, in a rename-only inbox, one created under its name: a writer's.
///
/// Folders are looked at again only when one of their waiting entries is due (``foldersToRevisit(now:)``):
/// a file held open, or many files left in a rename-only inbox, cost no scan of their folder per tick.
package struct SettleTracker: Sendable {
    /// A folder's path bytes, "/", and a name's bytes.
    package typealias Key = [UInt8]

    /// A file's identity and state as stat(2) gives them: what a restart matches a remembered file by.
    package struct Stamp: Sendable, Hashable {
        package var inode: UInt64
        package var size: Int64
        package var mtime: Int64
        package var ctime: Int64

        package init(inode: UInt64, size: Int64, mtime: Int64, ctime: Int64) {
            self.inode = inode
            self.size = size
            self.mtime = mtime
            self.ctime = ctime
        }

        package init(_ entry: Spool.Entry) {
            self.init(inode: entry.inode, size: entry.size, mtime: entry.mtime, ctime: entry.ctime)
        }
    }

    package struct Observation: Sendable, Equatable {
        var stamp: Stamp
        /// Our monotonic clock when it was first seen looking like this.
        var since: Int64
        /// When its folder must be looked at again for it.
        var due: Int64
    }

    /// What the tracker wants said in the log (once each).
    package enum Event: Sendable, Equatable {
        /// Settled but still open by its writer: waiting for the close.
        case heldOpen(Key)
        /// Still open, claimed after holding still for `openHold`; how long it was held, in nanoseconds.
        case claimedWhileOpen(Key, held: Int64)
        /// Written in place in a rename-only inbox: left for its writer.
        case writtenInPlace(Key)
    }

    package var settle: Int64
    package var openHold: Int64
    package var closeGrace: Int64
    /// How each entry arrived, when inotify saw it.
    private(set) var arrival: [Key: Spool.ArrivalHint] = [:]
    /// Last observation of each unsettled entry.
    private(set) var observed: [Key: Observation] = [:]
    /// Entries held open (opens minus closes, by inotify).
    private(set) var openCount: [Key: Int] = [:]
    /// Entries whose wait was already said in the log.
    private var logged: Set<Key> = []
    /// Files written in place in rename-only inboxes, as first seen so: what a restart must know.
    private var inPlace: [Key: Stamp] = [:]
    /// Such files remembered from before a restart, by folder, until the folder's first scan.
    private var restored: [[UInt8]: Set<Stamp>] = [:]
    /// Whether ``inPlaceRecords()`` changed since ``inPlaceSaved()``.
    package private(set) var inPlaceChanged = false

    /// - Parameters: `settle`, `openHold` and `closeGrace` in nanoseconds.
    package init(settle: Int64, openHold: Int64, closeGrace: Int64 = 0) {
        self.settle = settle
        self.openHold = openHold
        self.closeGrace = closeGrace
    }

    package static func key(folder: String, name: [UInt8]) -> Key { Array(folder.utf8) + [0x2F] + name }

    /// Takes in a wake-up's inotify hints. A write-close starts the close grace again (the time a file was
    /// open is no grace). After an overflow the open counts may be wrong: they are dropped and files settle
    /// by size and time; a create whose write-close may have been lost is no longer taken for a link.
    package mutating func absorb(
        arrivals: [Key: Spool.ArrivalHint] = [:],
        opened: [Key: Int],
        overflow: Bool
    ) {
        for (key, hint) in arrivals {
            arrival[key] = hint
            if hint == .closed {
                observed[key] = nil
                // Written again: its stamp is taken anew at the next scan.
                if inPlace.removeValue(forKey: key) != nil { inPlaceChanged = true }
            }
        }
        if overflow {
            openCount.removeAll()
            arrival = arrival.filter { $0.value != .created }
        }
        for (key, delta) in opened {
            let count = (openCount[key] ?? 0) + delta
            // Below zero: a close of an open made before the watch began.
            openCount[key] = count > 0 ? count : nil
        }
    }

    /// The folders (as path bytes) that hold an unsettled entry due to be looked at by `now`.
    package func foldersToRevisit(now: Int64) -> Set<[UInt8]> {
        var folders = Set<[UInt8]>()
        for (key, observation) in observed where observation.due <= now {
            if let slash = key.lastIndex(of: 0x2F) { folders.insert(Array(key[..<slash])) }
        }
        return folders
    }

    /// Looks at a scan of `folder`, an inbox whose files arrive as `arrival` says; returns the entries
    /// ready to claim, and what to log. `fullEntry` gives an entry's size, mtime and ctime when the scan
    /// did not (-1): nil when it is gone.
    package mutating func scan(
        folder: String,
        arrival mode: Spool.Arrival = .close,
        entries: [Spool.Entry],
        now: Int64,
        wallNow: Int64,
        fullEntry: (Spool.Entry) -> Spool.Entry?
    ) -> (ready: [Spool.Entry], events: [Event]) {
        let folderBytes = Array(folder.utf8)
        let prefix = folderBytes + [0x2F]
        let remembered = restored.removeValue(forKey: folderBytes) ?? []
        var ready: [Spool.Entry] = []
        var events: [Event] = []
        var present = Set<Key>()
        for var entry in entries {
            let key = prefix + entry.bytes
            present.insert(key)
            let isOpen = openCount[key] != nil
            var hint = arrival[key]
            if entry.type != .regular || (hint == .renamed && !isOpen) {
                ready.append(entry)
                continue
            }
            if mode == .rename && hint == .closed && inPlace[key] != nil {
                // Known and left for its writer: nothing to look at until an event names it again.
                observed[key] = nil
                continue
            }
            if entry.size < 0 || entry.ctime < 0 {
                guard let full = fullEntry(entry) else { continue }
                entry = full
            }
            let stamp = Stamp(entry)
            if mode == .rename && hint == nil && remembered.contains(stamp) {
                // Written in place before a restart, unchanged since: still its writer's.
                hint = .closed
                arrival[key] = .closed
            }
            if mode == .rename && hint == .closed {
                observed[key] = nil
                inPlace[key] = stamp
                inPlaceChanged = true
                if logged.insert(key).inserted { events.append(.writtenInPlace(key)) }
                continue
            }
            let inPlaceWrite = hint == .closed
            let linked = mode == .rename && hint == .created
            if isOpen && linked {
                // A rename-only inbox's file created under its name and open: its writer's, however long;
                // looked at again when its close names it.
                observed[key] = nil
                continue
            }
            guard let before = observed[key], before.stamp == stamp else {
                // First seen like this: the grace, the settle interval or the open hold starts now.
                let (age, overflow) = wallNow.subtractingReportingOverflow(entry.mtime)
                let oldAlready = !overflow && age >= settle && !inPlaceWrite && !linked
                let wait = isOpen ? settle : (inPlaceWrite || linked) ? closeGrace : settle
                observed[key] = Observation(stamp: stamp, since: now, due: oldAlready ? now : now + wait)
                // No grace: a file written in place is ready as soon as it is closed.
                if !isOpen && closeGrace <= 0 && (inPlaceWrite || linked) {
                    observed[key] = nil
                    ready.append(entry)
                }
                continue
            }
            let held = now - before.since
            if isOpen {
                if held >= settle && logged.insert(key).inserted { events.append(.heldOpen(key)) }
                if held >= max(settle, openHold) {
                    events.append(.claimedWhileOpen(key, held: held))
                    ready.append(entry)
                } else {
                    observed[key]?.due = before.since + (held >= settle ? max(settle, openHold) : settle)
                }
                continue
            }
            // Written in place (or linked in): closed and unchanged for the grace, by our clock only — its
            // mtime may be any time its writer chose (`rsync -a` keeps the sender's).
            if inPlaceWrite || linked {
                if held >= closeGrace { ready.append(entry) } else { observed[key]?.due = before.since + closeGrace }
                continue
            }
            // Settled: unchanged for the settle interval, by its mtime or by our own clock — an mtime in
            // the future (a sender's clock, `rsync -t`) must not keep a file waiting until then.
            let (age, overflow) = wallNow.subtractingReportingOverflow(entry.mtime)
            if (!overflow && age >= settle) || held >= settle {
                ready.append(entry)
            } else {
                observed[key]?.due = before.since + settle
            }
        }
        // Forget what vanished from this folder.
        func kept(_ key: Key) -> Bool { present.contains(key) || !Self.isEntry(key, of: prefix) }
        observed = observed.filter { kept($0.key) }
        openCount = openCount.filter { kept($0.key) }
        logged = logged.filter(kept)
        arrival = arrival.filter { kept($0.key) }
        let before = inPlace.count
        inPlace = inPlace.filter { kept($0.key) }
        if inPlace.count != before { inPlaceChanged = true }
        return (ready, events)
    }

    /// Whether `key` names an entry directly in the folder whose path bytes and "/" are `prefix` (not in a
    /// folder below it, which may be another inbox).
    static func isEntry(_ key: Key, of prefix: [UInt8]) -> Bool {
        key.starts(with: prefix) && !key[prefix.count...].contains(0x2F)
    }

    /// Forgets `key`: it was claimed (or found unclaimable).
    package mutating func forget(_ key: Key) {
        arrival[key] = nil
        observed[key] = nil
        openCount[key] = nil
        logged.remove(key)
        if inPlace.removeValue(forKey: key) != nil { inPlaceChanged = true }
    }

    /// The files written in place in rename-only inboxes, by folder path bytes: what to remember across a
    /// restart (no names).
    package func inPlaceRecords() -> [(folder: [UInt8], stamp: Stamp)] {
        inPlace.compactMap { key, stamp in
            key.lastIndex(of: 0x2F).map { (Array(key[..<$0]), stamp) }
        }
    }

    /// ``inPlaceRecords()`` was saved.
    package mutating func inPlaceSaved() { inPlaceChanged = false }

    /// Files written in place in `folder` before a restart: an entry matching one when the folder is first
    /// scanned is still its writer's.
    package mutating func restoreInPlace(folder: String, stamps: Set<Stamp>) {
        restored[Array(folder.utf8), default: []].formUnion(stamps)
    }
}
