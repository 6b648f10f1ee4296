// Config: the configuration file, /etc/carespool/carespool.toml by default (TOMLKit).
//
// Every key is optional: what the file leaves out, flags or built-in defaults supply. Strict: an unknown
// key, a value of the wrong type or out of range stops start-up with an error naming the file, the line
// and the key (exit status 78, EX_CONFIG), so a typo never silently falls back to a default. Knows no
// other module; secrets are kept as given (tokens as SHA-256) and masked whenever printed. Whether a secret
// is strong enough is decided at start by the executable (HTTPIngress's SecretRule), for flags and file.

import Crypto
import Foundation
import TOMLKit

/// How a Zoom report inbox's local times are read (`[zoom_report]`, or an `[[inbox]]` of that kind):
/// checked here, turned into Kinds' `LocalTimes` by the executable.
package struct LocalTimeConfig: Sendable, Equatable {
    /// An IANA zone name; nil when none is configured.
    package var timezone: String?
    /// "MM/DD/YYYY" (the default) or "DD/MM/YYYY".
    package var dateOrder = "MM/DD/YYYY"
    /// "either" (the default), "12h" or "24h".
    package var clock = "either"

    package init() {}

    static let keys = ["timezone", "date_order", "clock"]
    static let dateOrders = ["MM/DD/YYYY", "DD/MM/YYYY"]
    static let clocks = ["either", "12h", "24h"]
}

/// A setting's problem, with where it is.
package struct ConfigError: Error, Sendable, CustomStringConvertible {
    package var path: String
    package var line: Int?
    package var key: String?
    package var message: String

    package init(path: String, line: Int?, key: String?, message: String) {
        self.path = path
        self.line = line
        self.key = key
        self.message = message
    }

    package var description: String {
        var text = path
        if let line { text += ":\(line)" }
        if let key { text += ": \(key)" }
        return text + ": " + message
    }
}

/// A bearer token as configured: its name, the SHA-256 of its secret, the routes it may write.
package struct ConfiguredToken: Sendable, Equatable {
    package var name: String
    package var sha256: [UInt8]
    package var routes: [String]
    /// The secret's length in bytes when the file gives `secret` (nil for `sha256`), for the executable's
    /// check of weak secrets at start.
    package var secretBytes: Int? = nil
    /// `secret_file`: the file holding the secret (an absolute path, or a systemd credential's name),
    /// read by the executable at start; `sha256` is empty until then.
    package var secretFile: String? = nil
}

/// The file's settings; nil (or empty) where the file says nothing.
package struct ConfigFile: Sendable {
    package var path: String = ""
    package var spool: String?
    package var database: String?
    /// `[database] password_file`: the file holding a PostgreSQL role's password (an absolute path, or a
    /// systemd credential's name), never the URL.
    package var databasePasswordFile: String?
    package var schema: String?
    package var logLevel: String?
    package var settleMs: Int?
    /// How long a file written in place under its name (closed, not renamed in) must stay unchanged
    /// before it is claimed.
    package var closeGraceMs: Int?
    package var openHoldMs: Int?
    package var rescanMs: Int?
    package var batchSize: Int?
    package var streamThreshold: Int?
    /// `memory_budget`: MiB the pipeline plans its work for.
    package var memoryBudgetMib: Int?
    package var busyTimeoutMs: Int?
    /// How long a large file's chunk transaction may hold the write lock (`chunk_commit_ms`).
    package var chunkCommitMs: Int?
    /// Days finished files stay in done/ before the daemon removes them (the ledger rows stay).
    package var retentionDays: Int?
    /// Extra folders watched as inboxes, each for one kind (a partner's SFTP upload folder, say).
    /// `arrival` is "close" (the default) or "rename" (only files renamed or linked in are claimed).
    package var inboxes: [(path: String, kind: String, arrival: String)] = []
    /// `[zoom_report]`: the local times of the spool's own `inbox/zoom-report/`.
    package var zoomReportTimes = LocalTimeConfig()
    /// Each `[[inbox]]` of kind zoom-report's own local times, by its path (else `[zoom_report]`'s).
    package var inboxTimes: [String: LocalTimeConfig] = [:]

    package var httpListen: String?
    package var tokens: [ConfiguredToken] = []
    package var zoomSecrets: [String] = []
    package var webhookSecrets: [String: [String]] = [:]
    /// `http.zoom_secret_files` and `[http.webhook_secret_files]`: files holding secrets (absolute paths,
    /// or systemd credentials' names), read by the executable at start, added to the secrets above.
    package var zoomSecretFiles: [String] = []
    package var webhookSecretFiles: [String: [String]] = [:]
    package var ratePerSecond: Double?
    /// `http.open_routes`: routes (kinds, or "*") opened without credentials, loopback only.
    package var openRoutes: [String]?
    package var inboxHighWater: Int?
    package var diskReserveMib: Int?
    package var headerTimeoutSeconds: Int?
    package var bodyTimeoutSeconds: Int?
    package var maxConnections: Int?
    package var webhookBodyLimit: Int?
    package var ingestBodyLimit: Int?
    /// `[compression]`: how far a gzip file may expand (MiB, and decompressed bytes per compressed byte).
    package var maxDecompressedMib: Int?
    package var maxRatio: Int?
    /// `[notify]`: where verdicts are announced; nil when the table is absent.
    package var notify: NotifyConfig?
    private var keyLines = KeyLines("")

    package init() {}

    /// A problem with `key` of this file (its line found in the text), for checks made elsewhere.
    package func error(_ key: String, _ message: String) -> ConfigError {
        ConfigError(path: path, line: keyLines.line(of: key), key: key, message: message)
    }

    /// Reads and checks `text` (the contents of `path`). `kinds` are the record kinds inboxes and routes
    /// may name.
    package init(text: String, path: String, kinds: [String], routes routeKinds: [String]? = nil) throws(ConfigError) {
        // The kinds the HTTP door has routes for (a Zoom report is only ever a drop); all, unless said.
        let routeKinds = routeKinds ?? kinds
        self.path = path
        let lines = KeyLines(text)
        keyLines = lines
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw ConfigError(path: path, line: error.source.begin.line, key: nil, message: error.description)
        } catch {
            throw ConfigError(path: path, line: nil, key: nil, message: "\(error)")
        }
        let reader = Reader(path: path, lines: lines)
        try reader.only(table, at: "", allowed: Self.topKeys)
        spool = try reader.string(table, "spool", nonEmpty: true)
        // `database = "PATH"` (SQLite), or `[database]` with `url` (SQLite's path or a postgres:// URL)
        // and `password_file`.
        if table["database"]?.table != nil, let store = try reader.table(table, "database") {
            try reader.only(store, at: "database", allowed: ["url", "password_file"])
            database = try reader.string(store, "url", at: "database", nonEmpty: true)
            databasePasswordFile = try reader.string(store, "password_file", at: "database", nonEmpty: true)
            if database == nil { throw reader.error("database.url", "[database] needs its url") }
        } else {
            database = try reader.string(table, "database", nonEmpty: true)
        }
        if let database {
            let key = databasePasswordFile == nil && table["database"]?.table == nil ? "database" : "database.url"
            let location: DatabaseLocation
            do throws(DatabaseURLError) {
                location = try DatabaseLocation.parse(database)
            } catch {
                throw reader.error(key, error.description)
            }
            if case .sqlite = location, databasePasswordFile != nil {
                throw reader.error("database.password_file", "a SQLite file has no password: name a postgres:// URL")
            }
        }
        schema = try reader.string(table, "schema", nonEmpty: true)
        logLevel = try reader.string(table, "log_level")
        if let level = logLevel, !Self.logLevels.contains(level) {
            throw reader.error("log_level", "must be one of " + Self.logLevels.joined(separator: ", "))
        }
        settleMs = try reader.int(table, "settle_ms", in: ConfigLimits.settleMs)
        closeGraceMs = try reader.int(table, "close_grace_ms", in: ConfigLimits.closeGraceMs)
        openHoldMs = try reader.int(table, "open_hold_ms", in: ConfigLimits.openHoldMs)
        rescanMs = try reader.int(table, "rescan_ms", in: ConfigLimits.rescanMs)
        batchSize = try reader.int(table, "batch_size", in: ConfigLimits.batchSize)
        streamThreshold = try reader.int(table, "stream_threshold", in: ConfigLimits.streamThreshold)
        memoryBudgetMib = try reader.int(table, "memory_budget", in: ConfigLimits.memoryBudgetMib)
        busyTimeoutMs = try reader.int(table, "busy_timeout_ms", in: ConfigLimits.busyTimeoutMs)
        chunkCommitMs = try reader.int(table, "chunk_commit_ms", in: ConfigLimits.chunkCommitMs)

        if let report = try reader.table(table, "zoom_report") {
            try reader.only(report, at: "zoom_report", allowed: LocalTimeConfig.keys)
            zoomReportTimes = try Self.localTimes(report, at: "zoom_report", reader: reader, base: LocalTimeConfig())
        }
        if let compression = try reader.table(table, "compression") {
            try reader.only(compression, at: "compression", allowed: ["max_decompressed_mib", "max_ratio"])
            maxDecompressedMib = try reader.int(
                compression,
                "max_decompressed_mib",
                at: "compression",
                in: ConfigLimits.maxDecompressedMib
            )
            maxRatio = try reader.int(compression, "max_ratio", at: "compression", in: ConfigLimits.maxRatio)
        }
        if let table = try reader.table(table, "notify") {
            notify = try NotifyConfig(table, reader: reader)
        }
        if let retention = try reader.table(table, "retention") {
            try reader.only(retention, at: "retention", allowed: ["done_days"])
            retentionDays = try reader.int(retention, "done_days", at: "retention", in: ConfigLimits.doneDays)
        }
        if let list = try reader.tables(table, "inbox") {
            for (index, entry) in list.enumerated() {
                let at = "inbox[\(index)]"
                try reader.only(entry, at: at, allowed: ["path", "kind", "arrival"] + LocalTimeConfig.keys)
                guard var folder = try reader.string(entry, "path", at: at, nonEmpty: true), folder.hasPrefix("/")
                else { throw reader.error(at + ".path", "an absolute folder path is required") }
                // One folder, one inbox: `/srv/p/.` is `/srv/p`, and the spool's own inboxes are taken.
                folder = Self.normalized(folder)
                if let spool, kinds.contains(where: { folder == Self.normalized(spool + "/inbox/" + $0) }) {
                    throw reader.error(at + ".path", "\(folder) is one of the spool's own inboxes")
                }
                guard let kind = try reader.string(entry, "kind", at: at), kinds.contains(kind) else {
                    throw reader.error(at + ".kind", "must be one of " + kinds.joined(separator: ", "))
                }
                if inboxes.contains(where: { $0.path == folder }) {
                    throw reader.error(at + ".path", "\(folder) is already an inbox")
                }
                let arrival = try reader.string(entry, "arrival", at: at) ?? "close"
                guard Self.arrivals.contains(arrival) else {
                    throw reader.error(at + ".arrival", "must be one of " + Self.arrivals.joined(separator: ", "))
                }
                if let key = LocalTimeConfig.keys.first(where: { entry[$0] != nil }) {
                    guard kind == "zoom-report" else {
                        throw reader.error(at + "." + key, "only an inbox of kind zoom-report reads local times")
                    }
                    inboxTimes[folder] = try Self.localTimes(entry, at: at, reader: reader, base: zoomReportTimes)
                }
                inboxes.append((folder, kind, arrival))
            }
        }
        if let http = try reader.table(table, "http") {
            try reader.only(http, at: "http", allowed: Self.httpKeys)
            httpListen = try reader.string(http, "listen", at: "http")
            if let listen = httpListen, listen != "off", Self.hostPort(listen) == nil {
                throw reader.error("http.listen", "must be HOST:PORT or \"off\"")
            }
            zoomSecrets = try reader.strings(http, "zoom_secrets", at: "http") ?? []
            zoomSecretFiles = try reader.strings(http, "zoom_secret_files", at: "http") ?? []
            if let files = try reader.table(http, "webhook_secret_files", at: "http") {
                try reader.only(files, at: "http.webhook_secret_files", allowed: kinds)
                for kind in kinds {
                    if let list = try reader.strings(files, kind, at: "http.webhook_secret_files") {
                        webhookSecretFiles[kind] = list
                    }
                }
            }
            ratePerSecond = try reader.double(http, "rate_per_second", at: "http")
            if let routes = try reader.strings(http, "open_routes", at: "http") {
                let expanded = routes.contains("*") ? routeKinds : routes
                guard expanded.allSatisfy(routeKinds.contains) else {
                    throw reader.error(
                        "http.open_routes",
                        "list routes among " + routeKinds.joined(separator: ", ") + ", or \"*\""
                    )
                }
                openRoutes = expanded
            }
            inboxHighWater = try reader.int(http, "inbox_high_water", at: "http", in: ConfigLimits.inboxHighWater)
            diskReserveMib = try reader.int(http, "disk_reserve_mib", at: "http", in: ConfigLimits.diskReserveMib)
            headerTimeoutSeconds = try reader.int(http, "header_timeout_s", at: "http", in: ConfigLimits.timeoutSeconds)
            bodyTimeoutSeconds = try reader.int(http, "body_timeout_s", at: "http", in: ConfigLimits.timeoutSeconds)
            maxConnections = try reader.int(http, "max_connections", at: "http", in: ConfigLimits.maxConnections)
            webhookBodyLimit = try reader.int(http, "webhook_body_limit", at: "http", in: ConfigLimits.bodyLimit)
            ingestBodyLimit = try reader.int(http, "ingest_body_limit", at: "http", in: ConfigLimits.bodyLimit)
            if let secrets = try reader.table(http, "webhook_secrets", at: "http") {
                try reader.only(secrets, at: "http.webhook_secrets", allowed: kinds)
                for kind in kinds {
                    if let list = try reader.strings(secrets, kind, at: "http.webhook_secrets") {
                        webhookSecrets[kind] = list
                    }
                }
            }
            if let list = try reader.tables(http, "token", at: "http") {
                for (index, entry) in list.enumerated() {
                    let at = "http.token[\(index)]"
                    try reader.only(entry, at: at, allowed: ["name", "sha256", "secret", "secret_file", "routes"])
                    guard let name = try reader.string(entry, "name", at: at, nonEmpty: true) else {
                        throw reader.error(at, "a token needs a name")
                    }
                    if tokens.contains(where: { $0.name == name }) {
                        throw reader.error(at + ".name", "token \(name) is configured twice")
                    }
                    let hex = try reader.string(entry, "sha256", at: at)
                    let secret = try reader.string(entry, "secret", at: at, nonEmpty: true)
                    let secretFile = try reader.string(entry, "secret_file", at: at, nonEmpty: true)
                    let digest: [UInt8]
                    var secretBytes: Int?
                    switch (hex, secret) {
                    case (nil, nil) where secretFile != nil:
                        digest = []
                    case _ where secretFile != nil:
                        throw reader.error(at, "give exactly one of sha256, secret or secret_file")
                    case (let hex?, nil):
                        guard let bytes = Self.hexBytes(hex), bytes.count == 32 else {
                            throw reader.error(at + ".sha256", "must be 64 hex digits (sha256sum of the token)")
                        }
                        digest = bytes
                    case (nil, let secret?):
                        digest = Array(SHA256.hash(data: Array(secret.utf8)))
                        secretBytes = secret.utf8.count
                    default:
                        throw reader.error(at, "give exactly one of sha256, secret or secret_file (preferred)")
                    }
                    let routes = try reader.strings(entry, "routes", at: at) ?? []
                    let expanded = routes.contains("*") ? routeKinds : routes
                    guard !expanded.isEmpty, expanded.allSatisfy(routeKinds.contains) else {
                        throw reader.error(
                            at + ".routes",
                            "list routes among " + routeKinds.joined(separator: ", ") + ", or \"*\""
                        )
                    }
                    tokens.append(
                        ConfiguredToken(
                            name: name,
                            sha256: digest,
                            routes: expanded,
                            secretBytes: secretBytes,
                            secretFile: secretFile
                        )
                    )
                }
            }
        }
    }

    /// `path` in one spelling: `//`, `.` and trailing slashes gone, `..` taken back lexically (`/x/../p/.`
    /// is `/p`), so that one folder is never two inboxes. A relative path stays relative.
    package static func normalized(_ path: String) -> String {
        var parts: [Substring] = []
        for part in path.split(separator: "/", omittingEmptySubsequences: true) {
            if part == "." { continue }
            if part == "..", let last = parts.last, last != ".." {
                parts.removeLast()
                continue
            }
            if part == ".." && path.hasPrefix("/") { continue }  // above the root is the root
            parts.append(part)
        }
        let joined = parts.joined(separator: "/")
        return path.hasPrefix("/") ? "/" + joined : (joined.isEmpty ? "." : joined)
    }

    /// The values of an inbox's `arrival` (Spool.Arrival's raw values; this module does not see Spool).
    static let arrivals = ["close", "rename"]

    static let topKeys = [
        "spool", "database", "schema", "log_level", "settle_ms", "close_grace_ms", "open_hold_ms", "rescan_ms",
        "batch_size",
        "stream_threshold", "memory_budget", "busy_timeout_ms", "chunk_commit_ms", "retention", "inbox", "http",
        "compression", "notify", "zoom_report",
    ]

    /// A table's `timezone`, `date_order` and `clock`, each else `base`'s.
    private static func localTimes(
        _ table: TOMLTable,
        at: String,
        reader: Reader,
        base: LocalTimeConfig
    ) throws(ConfigError) -> LocalTimeConfig {
        var times = base
        let prefix = at + "."
        if let zone = try reader.string(table, "timezone", at: at, nonEmpty: true) {
            // `Etc/GMT+5` is UTC−5 (POSIX's sign): a trap, and no daylight saving time anyway — refused.
            if zone.hasPrefix("Etc/GMT+") || zone.hasPrefix("Etc/GMT-") {
                throw reader.error(
                    prefix + "timezone",
                    "\(zone) is a fixed offset with POSIX's inverted sign (Etc/GMT+5 is UTC−5): name the region, "
                        + "America/Chicago say, whose clocks the report's times are"
                )
            }
            guard zone.contains("/") || zone == "UTC", TimeZone(identifier: zone) != nil else {
                throw reader.error(
                    prefix + "timezone",
                    "\(zone) is not an IANA time zone name this machine knows (America/Chicago, Europe/Berlin, UTC; "
                        + "an abbreviation such as CST names no daylight-saving rule)"
                )
            }
            times.timezone = zone
        }
        if let order = try reader.string(table, "date_order", at: at) {
            guard LocalTimeConfig.dateOrders.contains(order) else {
                throw reader.error(
                    prefix + "date_order",
                    "must be one of " + LocalTimeConfig.dateOrders.joined(separator: ", ")
                )
            }
            times.dateOrder = order
        }
        if let clock = try reader.string(table, "clock", at: at) {
            guard LocalTimeConfig.clocks.contains(clock) else {
                throw reader.error(prefix + "clock", "must be one of " + LocalTimeConfig.clocks.joined(separator: ", "))
            }
            times.clock = clock
        }
        return times
    }
    static let httpKeys = [
        "listen", "token", "zoom_secrets", "zoom_secret_files", "webhook_secrets", "webhook_secret_files",
        "rate_per_second", "open_routes", "inbox_high_water",
        "disk_reserve_mib", "header_timeout_s", "body_timeout_s", "max_connections", "webhook_body_limit",
        "ingest_body_limit",
    ]
    package static let logLevels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]

    /// HOST and PORT of `HOST:PORT` (an IPv6 host in brackets).
    package static func hostPort(_ text: String) -> (host: String, port: Int)? {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
            (0...65_535).contains(port)
        else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return host.isEmpty ? nil : (host, port)
    }

    static func hexBytes(_ text: String) -> [UInt8]? {
        let digits = Array(text.lowercased().utf8)
        guard digits.count % 2 == 0 else { return nil }
        var bytes: [UInt8] = []
        var index = 0
        while index < digits.count {
            guard let high = hexValue(digits[index]), let low = hexValue(digits[index + 1]) else { return nil }
            bytes.append(high << 4 | low)
            index += 2
        }
        return bytes
    }

    private static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: c - 0x30
        case 0x61...0x66: c - 0x61 + 10
        default: nil
        }
    }
}

/// `[notify]`: a hook program and/or a webhook URL told of every verdict whose outcome is listed.
package struct NotifyConfig: Sendable, Equatable {
    /// An absolute path, run with no arguments (the file's id, kind, outcome and counts in its
    /// environment, the JSON document on stdin).
    package var command: String?
    /// `http://HOST[:PORT]/PATH`: the JSON document is posted there, signed as Standard Webhooks do.
    package var url: String?
    package var host: String = ""
    package var port: Int = 80
    package var path: String = "/"
    /// `secret` (whsec_…), or `secret_file` read by the executable at start.
    package var secret: String?
    package var secretFile: String?
    package var outcomes: [String] = ["partial", "rejected"]
    /// Whether the file's original name is in the document and the environment (off: names can hold
    /// patient data).
    package var includeName = false
    package var timeoutSeconds = 30
    package var retryInitialMs = 1_000
    package var retryMaxSeconds = 3_600

    package static let keys = [
        "command", "url", "secret", "secret_file", "outcomes", "include_name", "timeout_s", "retry_initial_ms",
        "retry_max_s",
    ]
    package static let allOutcomes = ["accepted", "duplicate", "partial", "rejected"]

    package init() {}

    fileprivate init(_ table: TOMLTable, reader: Reader) throws(ConfigError) {
        try reader.only(table, at: "notify", allowed: Self.keys)
        command = try reader.string(table, "command", at: "notify", nonEmpty: true)
        if let command, !command.hasPrefix("/") {
            throw reader.error("notify.command", "must be an absolute path (run as is, without a shell)")
        }
        url = try reader.string(table, "url", at: "notify", nonEmpty: true)
        if let url {
            guard let parsed = Self.parse(url) else {
                if url.lowercased().hasPrefix("https://") {
                    throw reader.error(
                        "notify.url",
                        "https is not supported: carespool has no TLS client; post through a relay on this host "
                            + "(http://127.0.0.1:…) or use notify.command with curl"
                    )
                }
                throw reader.error("notify.url", "must be http://HOST[:PORT]/PATH")
            }
            (host, port, path) = parsed
        }
        if command == nil && url == nil { throw reader.error("notify", "give command, url or both") }
        secret = try reader.string(table, "secret", at: "notify", nonEmpty: true)
        secretFile = try reader.string(table, "secret_file", at: "notify", nonEmpty: true)
        if secret != nil && secretFile != nil {
            throw reader.error("notify.secret", "give secret or secret_file, not both")
        }
        if url != nil && secret == nil && secretFile == nil {
            throw reader.error(
                "notify.url",
                "a webhook needs secret_file (or secret): its receiver checks the signature"
            )
        }
        if let list = try reader.strings(table, "outcomes", at: "notify") {
            guard !list.isEmpty, list.allSatisfy(Self.allOutcomes.contains) else {
                throw reader.error("notify.outcomes", "list outcomes among " + Self.allOutcomes.joined(separator: ", "))
            }
            outcomes = Array(Set(list)).sorted()
        }
        if let value = table["include_name"] {
            guard let flag = value.bool else { throw reader.error("notify.include_name", "must be true or false") }
            includeName = flag
        }
        timeoutSeconds = try reader.int(table, "timeout_s", at: "notify", in: 1...3_600) ?? timeoutSeconds
        retryInitialMs = try reader.int(table, "retry_initial_ms", at: "notify", in: 10...3_600_000) ?? retryInitialMs
        retryMaxSeconds = try reader.int(table, "retry_max_s", at: "notify", in: 1...604_800) ?? retryMaxSeconds
    }

    /// HOST, PORT and PATH of `http://HOST[:PORT][/PATH][?QUERY]`: a host name or IPv4 address of letters,
    /// digits, dots and dashes, or an IPv6 address in brackets; a port of 1 to 65535; a path and query of
    /// printable ASCII without spaces or a fragment. nil otherwise (a CR or LF could split the request).
    package static func parse(_ url: String) -> (host: String, port: Int, path: String)? {
        guard url.lowercased().hasPrefix("http://") else { return nil }
        let rest = Substring(url.dropFirst(7))
        let end = rest.firstIndex { $0 == "/" || $0 == "?" } ?? rest.endIndex
        let authority = rest[..<end]
        var path = String(rest[end...])
        if path.isEmpty { path = "/" }
        if path.hasPrefix("?") { path = "/" + path }
        guard path.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "#") }) else { return nil }
        var host: Substring
        var portText: Substring?
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { return nil }
            host = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { return nil }
                portText = after.dropFirst()
            }
            guard !host.isEmpty,
                host.unicodeScalars.allSatisfy({ $0.properties.isASCIIHexDigit || $0 == ":" || $0 == "." })
            else { return nil }
        } else {
            let parts = authority.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count <= 2 else { return nil }
            host = parts[0]
            portText = parts.count == 2 ? parts[1] : nil
            guard !host.isEmpty,
                host.unicodeScalars.allSatisfy({
                    $0.isASCII
                        && ($0.properties.isAlphabetic || $0.properties.numericType != nil || $0 == "." || $0 == "-")
                })
            else { return nil }
        }
        var port = 80
        if let portText {
            guard let value = Int(portText), (1...65_535).contains(value), portText.allSatisfy(\.isASCII) else {
                return nil
            }
            port = value
        }
        return (String(host), port, path)
    }
}

/// Typed reads that fail naming the key and its line.
struct Reader {
    let path: String
    let lines: KeyLines

    func error(_ key: String, _ message: String) -> ConfigError {
        ConfigError(path: path, line: lines.line(of: key), key: key, message: message)
    }

    private func full(_ at: String, _ key: String) -> String { at.isEmpty ? key : at + "." + key }

    func only(_ table: TOMLTable, at: String, allowed: [String]) throws(ConfigError) {
        for key in table.keys where !allowed.contains(key) {
            throw error(full(at, key), "unknown key (known here: " + allowed.joined(separator: ", ") + ")")
        }
    }

    func string(_ table: TOMLTable, _ key: String, at: String = "", nonEmpty: Bool = false) throws(ConfigError)
        -> String?
    {
        guard let value = table[key] else { return nil }
        guard let text = value.string else { throw error(full(at, key), "must be a string") }
        if nonEmpty && text.isEmpty { throw error(full(at, key), "must not be empty") }
        return text
    }

    func int(_ table: TOMLTable, _ key: String, at: String = "", in range: ClosedRange<Int>) throws(ConfigError)
        -> Int?
    {
        guard let value = table[key] else { return nil }
        guard let number = value.int else { throw error(full(at, key), "must be an integer") }
        guard number >= range.lowerBound else { throw error(full(at, key), "must be at least \(range.lowerBound)") }
        guard number <= range.upperBound else { throw error(full(at, key), "must be at most \(range.upperBound)") }
        return number
    }

    func double(_ table: TOMLTable, _ key: String, at: String = "") throws(ConfigError) -> Double? {
        guard let value = table[key] else { return nil }
        guard let number = value.double ?? value.int.map(Double.init), number >= 0 else {
            throw error(full(at, key), "must be a number, 0 or more")
        }
        return number
    }

    func strings(_ table: TOMLTable, _ key: String, at: String = "") throws(ConfigError) -> [String]? {
        guard let value = table[key] else { return nil }
        guard let array = value.array else { throw error(full(at, key), "must be an array of strings") }
        var list: [String] = []
        for element in array {
            guard let text = element.string, !text.isEmpty else {
                throw error(full(at, key), "must be an array of non-empty strings")
            }
            list.append(text)
        }
        return list
    }

    func table(_ table: TOMLTable, _ key: String, at: String = "") throws(ConfigError) -> TOMLTable? {
        guard let value = table[key] else { return nil }
        guard let inner = value.table else { throw error(full(at, key), "must be a table ([\(full(at, key))])") }
        return inner
    }

    func tables(_ table: TOMLTable, _ key: String, at: String = "") throws(ConfigError) -> [TOMLTable]? {
        guard let value = table[key] else { return nil }
        guard let array = value.array else {
            throw error(full(at, key), "must be an array of tables ([[\(full(at, key))]])")
        }
        var list: [TOMLTable] = []
        for element in array {
            guard let inner = element.table else {
                throw error(full(at, key), "must be an array of tables ([[\(full(at, key))]])")
            }
            list.append(inner)
        }
        return list
    }
}

/// Where each key is defined in the file's text: the table headers (`[a.b]`, `[[a.b]]` counted per
/// array) and `key =` lines under them. TOMLKit reports lines for syntax errors only; this finds the
/// line of a key whose value is wrong. Keys are dotted paths, array entries as `name[index]`.
struct KeyLines: Sendable {
    private var lines: [String: Int] = [:]

    init(_ text: String) {
        var table = ""
        var counts: [String: Int] = [:]
        var number = 0
        for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
            number += 1
            let line = raw.drop { $0 == " " || $0 == "\t" }
            if line.hasPrefix("[[") {
                let name = Self.keyPath(line.dropFirst(2).prefix { $0 != "]" })
                let index = counts[name, default: 0]
                counts[name] = index + 1
                table = name + "[\(index)]"
                if lines[table] == nil { lines[table] = number }
                if lines[name] == nil { lines[name] = number }
            } else if line.hasPrefix("[") {
                table = Self.keyPath(line.dropFirst().prefix { $0 != "]" })
                if lines[table] == nil { lines[table] = number }
            } else if let equals = line.firstIndex(of: "="), !line.hasPrefix("#") {
                let key = Self.keyPath(line[..<equals])
                guard !key.isEmpty else { continue }
                let full = table.isEmpty ? key : table + "." + key
                if lines[full] == nil { lines[full] = number }
            }
        }
    }

    /// `a . "b"` as `a.b`.
    private static func keyPath(_ text: Substring) -> String {
        text.split(separator: ".").map { part in
            var key = part.trimmingCharacters()
            if key.count >= 2, key.hasPrefix("\"") || key.hasPrefix("'") { key = String(key.dropFirst().dropLast()) }
            return key
        }.joined(separator: ".")
    }

    /// The line of `key`, or of the nearest enclosing table that has one.
    func line(of key: String) -> Int? {
        var candidate = key
        while true {
            if let line = lines[candidate] { return line }
            guard let cut = candidate.lastIndex(where: { $0 == "." || $0 == "[" }) else { return nil }
            candidate = String(candidate[..<cut])
        }
    }
}

extension Substring {
    fileprivate func trimmingCharacters() -> String {
        var text = self
        while let first = text.first, first == " " || first == "\t" { text.removeFirst() }
        while let last = text.last, last == " " || last == "\t" { text.removeLast() }
        return String(text)
    }
}

/// The range of each integer setting, for the file and the flags alike. Beyond the upper bounds a duration
/// or a size would overflow (a trap, not an error) or makes no sense.
package enum ConfigLimits {
    package static let settleMs = 0...86_400_000  // a day
    package static let openHoldMs = 0...86_400_000
    package static let closeGraceMs = 0...3_600_000  // an hour
    package static let rescanMs = 100...86_400_000
    package static let batchSize = 1...100_000_000
    package static let streamThreshold = 0...(1 << 40)  // 1 TiB
    package static let memoryBudgetMib = 64...(1 << 20)  // memory_budget: 64 MiB to 1 TiB
    package static let busyTimeoutMs = 0...3_600_000  // an hour
    package static let chunkCommitMs = 0...60_000
    package static let doneDays = 1...36_500  // a hundred years
    package static let inboxHighWater = 1...100_000_000
    package static let diskReserveMib = 0...(1 << 20)  // 1 TiB
    package static let timeoutSeconds = 1...86_400  // header_timeout_s, body_timeout_s: a day
    package static let maxConnections = 1...100_000_000
    package static let bodyLimit = 1...(1 << 40)  // webhook_body_limit, ingest_body_limit
    package static let maxDecompressedMib = 1...(1 << 30)  // compression.max_decompressed_mib: 1 MiB to 1 PiB
    package static let maxRatio = 2...1_000_000  // compression.max_ratio
}
