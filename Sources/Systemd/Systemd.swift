// Systemd: speaking to systemd without libsystemd — the notify datagram protocol (sd_notify(3):
// READY=1, STATUS=, WATCHDOG=1, STOPPING=1 to $NOTIFY_SOCKET) and journald's stderr priority prefixes
// (sd-daemon(3): "<N>" when $JOURNAL_STREAM is set). Both protocols are a few lines and stable; linking
// libsystemd for them would add a system library to every build for nothing they need. Outside systemd
// (no $NOTIFY_SOCKET) every call does nothing.

package import Logging
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

package enum Systemd {
    /// $NOTIFY_SOCKET: a path, or `@name` in the abstract namespace; nil outside systemd.
    package static let notifySocket: String? = getenv("NOTIFY_SOCKET").map { String(cString: $0) }.flatMap {
        $0.isEmpty ? nil : $0
    }

    /// Sends `state` (newline-separated assignments) to the service manager; false when it could not.
    @discardableResult
    package static func notify(_ state: String) -> Bool {
        guard let path = notifySocket, path.utf8.count < 108 else { return false }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(path.utf8)
        if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 }  // the abstract namespace
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in bytes.enumerated() { raw[index] = byte }
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count)
        let payload = Array(state.utf8)
        let sent = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { socketAddress in
                payload.withUnsafeBytes {
                    sendto(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL), socketAddress, length)
                }
            }
        }
        return sent == payload.count
    }

    /// Half of $WATCHDOG_USEC when the watchdog is on for this process ($WATCHDOG_PID unset or ours).
    package static let watchdogInterval: Duration? = {
        guard notifySocket != nil, let text = getenv("WATCHDOG_USEC").map({ String(cString: $0) }),
            let usec = Int64(text), usec > 0
        else { return nil }
        if let pid = getenv("WATCHDOG_PID").map({ String(cString: $0) }), let value = Int32(pid), value != getpid() {
            return nil
        }
        return .microseconds(usec / 2)
    }()

    private static let lastPing = Mutex<ContinuousClock.Instant?>(nil)

    /// WATCHDOG=1, at most every half watchdog interval. Called from the processing loop, so a hung
    /// pipeline stops the pings and systemd restarts the service.
    package static func watchdogPing() {
        guard let interval = watchdogInterval else { return }
        let now = ContinuousClock.now
        let due = lastPing.withLock { last -> Bool in
            if let previous = last, now - previous < interval { return false }
            last = now
            return true
        }
        if due { notify("WATCHDOG=1") }
    }

    /// journald's socket for the native protocol (systemd.journal-fields(7), "native protocol").
    package static let journalSocket = "/run/systemd/journal/socket"

    /// Whether stderr goes to the journal ($JOURNAL_STREAM names stderr's device and inode).
    package static var stderrIsJournal: Bool {
        guard let text = getenv("JOURNAL_STREAM").map({ String(cString: $0) }) else { return false }
        let parts = text.split(separator: ":")
        var st = stat()
        guard parts.count == 2, let device = UInt64(parts[0]), let inode = UInt64(parts[1]), fstat(2, &st) == 0 else {
            return false
        }
        return UInt64(st.st_dev) == device && UInt64(st.st_ino) == inode
    }
}

/// Log entries for the journal. Connected to journald's native socket (``connect(_:)``): one datagram an
/// entry, with MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, MESSAGE_ID (from the `message_id` metadata: the
/// stable id of an outcome, for alerting) and each metadata key as a `CARESPOOL_` field; else (or when a
/// datagram cannot be sent) `<priority>label: message key=value…` on stderr, the priority from the level
/// (debug 7 … critical 2), so `journalctl -p warning` filters them. No timestamp: the journal adds its own.
package struct JournalLogHandler: LogHandler {
    package var metadata: Logger.Metadata = [:]
    package var logLevel: Logger.Level = .info
    private let label: String

    package init(label: String) { self.label = label }

    package subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    package static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    package func log(event: LogEvent) {
        var all = metadata
        if let extra = event.metadata { all.merge(extra) { _, new in new } }
        var text = "\(label): \(event.message)"
        for key in all.keys.sorted() where key != "message_id" { text += " \(key)=\(all[key]!)" }
        if Self.send(native(event, all, text: text)) { return }
        let line =
            "<\(Self.priority(event.level))>" + text + (all["message_id"].map { " message_id=\($0)" } ?? "") + "\n"
        _ = line.utf8CString.withUnsafeBufferPointer { write(2, $0.baseAddress, $0.count - 1) }
    }

    /// The entry in journald's native format: `NAME=value\n`, or for a value with a line break
    /// `NAME\n<64-bit little-endian length><value>\n`.
    private func native(_ event: LogEvent, _ all: Logger.Metadata, text: String) -> [UInt8] {
        var fields: [(String, String)] = [
            ("MESSAGE", text), ("PRIORITY", String(Self.priority(event.level))), ("SYSLOG_IDENTIFIER", "carespool"),
        ]
        for key in all.keys.sorted() {
            let value = "\(all[key]!)"
            if key == "message_id" {
                fields.append(("MESSAGE_ID", value))
            } else {
                fields.append((Self.fieldName(key), value))
            }
        }
        var bytes: [UInt8] = []
        for (name, value) in fields {
            bytes += name.utf8
            if value.utf8.contains(0x0A) {
                bytes.append(0x0A)
                withUnsafeBytes(of: UInt64(value.utf8.count).littleEndian) { bytes += $0 }
                bytes += value.utf8
            } else {
                bytes.append(UInt8(ascii: "="))
                bytes += value.utf8
            }
            bytes.append(0x0A)
        }
        return bytes
    }

    /// `file.id` as `CARESPOOL_FILE_ID`: upper-case letters, digits and underscores, at most 64 bytes.
    static func fieldName(_ key: String) -> String {
        let mapped = key.uppercased().unicodeScalars.map { scalar -> Character in
            switch scalar {
            case "A"..."Z", "0"..."9": Character(scalar)
            default: "_"
            }
        }
        return String(("CARESPOOL_" + String(mapped)).prefix(64))
    }

    private static let socket = Mutex<(fd: Int32, address: sockaddr_un, length: socklen_t)?>(nil)

    /// Sends entries to journald's native socket at `path` from now on.
    package static func connect(_ path: String) {
        guard path.utf8.count < 108 else { return }
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in path.utf8.enumerated() { raw[index] = byte }
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + path.utf8.count + 1)
        socket.withLock { $0 = (fd, address, length) }
    }

    /// Whether the datagram went to the journal (false: not connected, or refused — too large, no journald).
    private static func send(_ datagram: [UInt8]) -> Bool {
        guard var target = socket.withLock({ $0 }) else { return false }
        let sent = withUnsafePointer(to: &target.address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { address in
                datagram.withUnsafeBytes {
                    // Never blocks: a journal that stops reading must not stop the pipeline (the line
                    // goes to stderr instead).
                    sendto(
                        target.fd,
                        $0.baseAddress,
                        $0.count,
                        Int32(MSG_NOSIGNAL | MSG_DONTWAIT),
                        address,
                        target.length
                    )
                }
            }
        }
        return sent == datagram.count
    }
}
