import ArgumentParser
import Config
import HTTPIngress
import Logging
import Notify
import Pipeline
import Spool
import Store
import WebhookSignatures

#if canImport(Glibc)
    import Glibc
#endif

/// A flag's value in `range`: raised to its lower bound, refused above its upper one (the configuration
/// file's reader refuses both for its key).
private func bounded(_ flag: String, _ value: Int?, _ range: ClosedRange<Int>) throws -> Int? {
    guard let value else { return nil }
    guard value <= range.upperBound else { throw ValidationError("\(flag) must be at most \(range.upperBound)") }
    return max(range.lowerBound, value)
}

/// The settings in effect: each one from its flag, else the configuration file, else its default.
struct Settings {
    var logLevel: Logger.Level
    var busyTimeoutMs: Int
    var chunkCommitMs: Int
    var pipeline: PipelineConfiguration
    /// Days finished files stay in done/.
    var retentionDays: Int
    /// The HTTP endpoint's settings; nil when it is off.
    var http: HTTPConfiguration?
    /// `[notify]`'s targets (the webhook's secret read); nil when nothing is notified.
    var notifier: NotifierConfiguration?
    /// The PostgreSQL role's password, read from `--db-password-file` or `[database] password_file`.
    var databasePassword: String?
    /// The outcomes that owe a notification.
    var notifyOutcomes: Set<String> = []

    /// `serve` nil: the file and the defaults only (`carespool config check`).
    /// The PostgreSQL role's password: from the flag's file (a usage error when it cannot be used), else
    /// from `[database] password_file` (a configuration error naming the file's line, exit 78, which
    /// `config check` finds too). Empty is refused: no server takes it.
    static func databasePassword(flag: String?, config: ConfigFile) throws -> String? {
        let credentials = SecretFile.credentialsDirectory
        if let flag {
            let password = try SecretFile.read(flag, key: "--db-password-file", credentials: credentials)
            if password.isEmpty { throw ValidationError("--db-password-file: \(flag) is empty") }
            return password
        }
        guard let file = config.databasePasswordFile else { return nil }
        let key = "database.password_file"
        do {
            let password = try SecretFile.read(file, key: key, credentials: credentials)
            if password.isEmpty { throw config.error(key, "\(file) is empty") }
            return password
        } catch let error as ValidationError {
            throw config.error(key, error.message.replacingPrefix(key + ": "))
        }
    }

    init(serve: Serve?, config: ConfigFile) throws {
        let level = serve?.logLevel ?? config.logLevel ?? "info"
        guard let parsed = Logger.Level(rawValue: level) else {
            throw ValidationError("--log-level must be one of " + ConfigFile.logLevels.joined(separator: ", "))
        }
        logLevel = parsed
        chunkCommitMs =
            try bounded("--chunk-commit-ms", serve?.chunkCommitMs, ConfigLimits.chunkCommitMs) ?? config.chunkCommitMs
            ?? 5_000
        busyTimeoutMs =
            try bounded("--busy-timeout-ms", serve?.busyTimeoutMs, ConfigLimits.busyTimeoutMs) ?? config.busyTimeoutMs
            ?? 10_000
        pipeline = PipelineConfiguration(
            settle: .milliseconds(
                try bounded("--settle-ms", serve?.settleMs, ConfigLimits.settleMs) ?? config.settleMs ?? 2_000
            ),
            openHold: .milliseconds(
                try bounded("--open-hold-ms", serve?.openHoldMs, ConfigLimits.openHoldMs) ?? config.openHoldMs
                    ?? 600_000
            ),
            closeGrace: .milliseconds(
                try bounded("--close-grace-ms", serve?.closeGraceMs, ConfigLimits.closeGraceMs) ?? config.closeGraceMs
                    ?? 1_000
            ),
            rescanInterval: .milliseconds(
                try bounded("--rescan-ms", serve?.rescanMs, ConfigLimits.rescanMs) ?? config.rescanMs ?? 5_000
            ),
            batchSize: try bounded("--batch-size", serve?.batchSize, ConfigLimits.batchSize) ?? config.batchSize ?? 512,
            streamThreshold: try bounded("--stream-threshold", serve?.streamThreshold, ConfigLimits.streamThreshold)
                ?? config.streamThreshold ?? 8 << 20,
            memoryBudget: (try bounded("--memory-budget", serve?.memoryBudget, ConfigLimits.memoryBudgetMib)
                ?? config.memoryBudgetMib ?? 256) << 20
        )
        retentionDays =
            try bounded("--retention-days", serve?.retentionDays, ConfigLimits.doneDays) ?? config.retentionDays ?? 30
        pipeline.retentionDays = retentionDays

        let listen = serve?.http ?? config.httpListen ?? "127.0.0.1:8080"
        // Secrets are parsed and checked whether or not HTTP is on: a weak one is a mistake either way.
        var tokens: [HTTPToken] = []
        let credentials = SecretFile.credentialsDirectory
        let tokenFileFlags = serve?.httpTokenFile ?? []
        let tokenFlags = (serve?.httpToken ?? []) + (tokenFileFlags.isEmpty ? [] : [""])
        for spec in tokenFileFlags {
            // NAME:FILE:ROUTES, the secret read from FILE.
            let parts = spec.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false).map(String.init)
            guard parts.count == 3, !parts[0].isEmpty,
                let token = HTTPToken(
                    spec: parts[0] + ":"
                        + (try SecretFile.read(parts[1], key: "--http-token-file \(parts[0])", credentials: credentials))
                        + ":" + parts[2]
                )
            else {
                throw ValidationError(
                    "--http-token-file must be NAME:FILE:ROUTES (routes: appointments, zoom, intake, *)"
                )
            }
            tokens.append(token)
        }
        if !tokenFlags.isEmpty {
            for spec in tokenFlags where !spec.isEmpty {
                guard let token = HTTPToken(spec: spec) else {
                    throw ValidationError(
                        "--http-token must be NAME:SECRET:ROUTES (routes: appointments, zoom, intake, *)"
                    )
                }
                tokens.append(token)
            }
        } else {
            for (index, configured) in config.tokens.enumerated() {
                guard let file = configured.secretFile else {
                    tokens.append(
                        HTTPToken(
                            name: configured.name,
                            sha256: configured.sha256,
                            routes: Set(configured.routes),
                            secretBytes: configured.secretBytes
                        )
                    )
                    continue
                }
                let key = "http.token[\(index)].secret_file"
                let secret: String
                do {
                    secret = try SecretFile.read(file, key: key, credentials: credentials)
                } catch let error as ValidationError {
                    throw config.error(key, error.message.replacingPrefix(key + ": "))
                }
                if let reason = SecretRule.weakness(keyBytes: secret.utf8.count) { throw config.error(key, reason) }
                tokens.append(
                    HTTPToken(spec: configured.name + ":" + secret + ":" + configured.routes.joined(separator: ","))!
                )
            }
        }
        var webhookSecrets = config.webhookSecrets
        let webhookFlags = serve?.webhookSecret ?? []
        if !webhookFlags.isEmpty {
            webhookSecrets = [:]
            for spec in webhookFlags {
                let parts = spec.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
                guard parts.count == 2, ["appointments", "zoom", "intake"].contains(String(parts[0])) else {
                    throw ValidationError("--webhook-secret must be ROUTE:SECRET (routes: appointments, zoom, intake)")
                }
                webhookSecrets[String(parts[0]), default: []].append(String(parts[1]))
            }
        }
        var zoomFlags = serve?.zoomSecret ?? []
        for file in serve?.zoomSecretFile ?? [] {
            zoomFlags.append(try SecretFile.read(file, key: "--zoom-secret-file", credentials: credentials))
        }
        var zoomSecrets = zoomFlags.isEmpty ? config.zoomSecrets : zoomFlags
        if zoomFlags.isEmpty {
            for file in config.zoomSecretFiles {
                let key = "http.zoom_secret_files"
                do {
                    let secret = try SecretFile.read(file, key: key, credentials: credentials)
                    if let reason = SecretRule.weakness(zoomSecret: secret) { throw config.error(key, reason) }
                    zoomSecrets.append(secret)
                } catch let error as ValidationError {
                    throw config.error(key, error.message.replacingPrefix(key + ": "))
                }
            }
        }
        var webhookFileFlags = false
        for spec in serve?.webhookSecretFile ?? [] {
            let parts = spec.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            guard parts.count == 2, ["appointments", "zoom", "intake"].contains(parts[0]) else {
                throw ValidationError("--webhook-secret-file must be ROUTE:FILE (routes: appointments, zoom, intake)")
            }
            if !webhookFileFlags && webhookFlags.isEmpty { webhookSecrets = [:] }
            webhookFileFlags = true
            webhookSecrets[parts[0], default: []].append(
                try SecretFile.read(parts[1], key: "--webhook-secret-file \(parts[0])", credentials: credentials)
            )
        }
        if webhookFlags.isEmpty && !webhookFileFlags {
            for route in config.webhookSecretFiles.keys.sorted() {
                let key = "http.webhook_secret_files.\(route)"
                for file in config.webhookSecretFiles[route] ?? [] {
                    do {
                        let secret = try SecretFile.read(file, key: key, credentials: credentials)
                        if let reason = SecretRule.weakness(webhookSecret: secret) { throw config.error(key, reason) }
                        webhookSecrets[route, default: []].append(secret)
                    } catch let error as ValidationError {
                        throw config.error(key, error.message.replacingPrefix(key + ": "))
                    }
                }
            }
        }
        try Self.checkSecrets(
            tokens: tokens,
            zoomSecrets: zoomSecrets,
            webhookSecrets: webhookSecrets,
            fromFlags: (
                tokens: !tokenFlags.isEmpty, zoom: !zoomFlags.isEmpty,
                webhook: !webhookFlags.isEmpty || webhookFileFlags
            ),
            config: config
        )
        notifier = try Self.notifier(config, credentials: credentials)
        databasePassword = try Self.databasePassword(flag: serve?.spoolOptions.dbPasswordFile, config: config)
        guard listen != "off" else {
            http = nil
            return
        }
        guard let (host, port) = ConfigFile.hostPort(listen) else {
            throw ValidationError("--http must be HOST:PORT or off, not \(listen)")
        }
        let rate = serve?.httpRate ?? config.ratePerSecond ?? 0
        var openRoutes = Set(config.openRoutes ?? [])
        if let flags = serve?.httpOpen, !flags.isEmpty {
            let expanded = flags.contains("*") ? ["appointments", "zoom", "intake"] : flags
            guard expanded.allSatisfy(["appointments", "zoom", "intake"].contains) else {
                throw ValidationError("--http-open takes a route: appointments, zoom, intake, or *")
            }
            openRoutes = Set(expanded)
        }
        let configuration = HTTPConfiguration(
            host: host,
            port: port,
            webhookBodyLimit: try bounded("--webhook-body-limit", serve?.webhookBodyLimit, ConfigLimits.bodyLimit)
                ?? config.webhookBodyLimit ?? 1 << 20,
            ingestBodyLimit: try bounded("--ingest-body-limit", serve?.ingestBodyLimit, ConfigLimits.bodyLimit)
                ?? config.ingestBodyLimit ?? 64 << 20,
            tokens: tokens,
            zoomSecrets: zoomSecrets,
            webhookSecrets: webhookSecrets,
            ratePerSecond: rate > 0 ? rate : nil,
            inboxHighWater: try bounded("--inbox-high-water", serve?.inboxHighWater, ConfigLimits.inboxHighWater)
                ?? config.inboxHighWater ?? 20_000,
            diskReserve: Int64(
                try bounded("--disk-reserve-mib", serve?.diskReserveMib, ConfigLimits.diskReserveMib) ?? config
                    .diskReserveMib ?? 256
            ) << 20,
            headerTimeout: .seconds(
                try bounded("--http-header-timeout", serve?.httpHeaderTimeout, ConfigLimits.timeoutSeconds) ?? config
                    .headerTimeoutSeconds ?? 10
            ),
            bodyTimeout: .seconds(
                try bounded("--http-body-timeout", serve?.httpBodyTimeout, ConfigLimits.timeoutSeconds) ?? config
                    .bodyTimeoutSeconds ?? 60
            ),
            maxConnections: try bounded(
                "--http-max-connections",
                serve?.httpMaxConnections,
                ConfigLimits.maxConnections
            ) ?? config.maxConnections ?? 1_024,
            openRoutes: openRoutes,
            bodyBudget: pipeline.memoryBudget / 4,
            recordLimit: pipeline.recordLimit
        )
        if let refusal = configuration.refusal {
            // From the file (and not overridden): a configuration error, exit 78; from flags: a usage error.
            if serve?.http == nil, config.httpListen != nil { throw config.error("http.listen", refusal) }
            throw ValidationError(refusal)
        }
        http = configuration
    }

    /// The notifier's settings from `[notify]`, its webhook secret read (from `secret_file` or a
    /// systemd credential) and judged like every other secret.
    private static func notifier(_ config: ConfigFile, credentials: String?) throws -> NotifierConfiguration? {
        guard let notify = config.notify else { return nil }
        var result = NotifierConfiguration()
        if let command = notify.command, access(command, X_OK) != 0 {
            // Found now, not at the first failed file's notification, retried for ever.
            throw config.error("notify.command", "\(command) is not an executable file this user may run")
        }
        result.command = notify.command
        result.includeName = notify.includeName
        result.timeout = .seconds(notify.timeoutSeconds)
        result.retryInitial = .milliseconds(notify.retryInitialMs)
        result.retryMax = .seconds(notify.retryMaxSeconds)
        if notify.url != nil {
            var secret = notify.secret ?? ""
            var key = "notify.secret"
            if let file = notify.secretFile {
                key = "notify.secret_file"
                do {
                    secret = try SecretFile.read(file, key: key, credentials: credentials)
                } catch let error as ValidationError {
                    throw config.error(key, error.message.replacingPrefix(key + ": "))
                }
            }
            if let reason = SecretRule.weakness(webhookSecret: secret) { throw config.error(key, reason) }
            result.webhook = (notify.host, notify.port, notify.path, StandardWebhooks.key(secret: secret))
        }
        return result
    }

    /// Refuses an empty or weak secret (``SecretRule``) naming where it was given: the flag, or the
    /// file's key (a configuration error, exit 78). A token given only as its SHA-256 cannot be judged.
    private static func checkSecrets(
        tokens: [HTTPToken],
        zoomSecrets: [String],
        webhookSecrets: [String: [String]],
        fromFlags: (tokens: Bool, zoom: Bool, webhook: Bool),
        config: ConfigFile
    ) throws {
        for (index, token) in tokens.enumerated() {
            guard let bytes = token.secretBytes, let reason = SecretRule.weakness(keyBytes: bytes) else { continue }
            if fromFlags.tokens { throw ValidationError("--http-token \(token.name): the secret \(reason)") }
            throw config.error("http.token[\(index)].secret", reason)
        }
        for secret in zoomSecrets {
            guard let reason = SecretRule.weakness(zoomSecret: secret) else { continue }
            if fromFlags.zoom { throw ValidationError("--zoom-secret: the secret \(reason)") }
            throw config.error("http.zoom_secrets", reason)
        }
        for route in webhookSecrets.keys.sorted() {
            for secret in webhookSecrets[route] ?? [] {
                guard let reason = SecretRule.weakness(webhookSecret: secret) else { continue }
                if fromFlags.webhook { throw ValidationError("--webhook-secret \(route): the secret \(reason)") }
                throw config.error("http.webhook_secrets.\(route)", reason)
            }
        }
    }
}

extension String {
    /// Itself without `prefix`, if it starts with it.
    fileprivate func replacingPrefix(_ prefix: String) -> String {
        hasPrefix(prefix) ? String(dropFirst(prefix.count)) : self
    }
}

extension ConfigFile {
    /// `[compression]`'s limits, or the defaults.
    var decompressionLimits: DecompressionLimits {
        DecompressionLimits(
            maxBytes: Int64(maxDecompressedMib ?? DecompressionLimits.defaultMaxMib) << 20,
            maxRatio: maxRatio ?? DecompressionLimits.defaultMaxRatio
        )
    }
}
