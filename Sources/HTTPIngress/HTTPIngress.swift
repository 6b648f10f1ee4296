// HTTPIngress: the HTTP endpoint, whose only job is to write requests into the spool.
//
// Trusts nothing in a request. Checks at the door — auth, content type, size, well-formed JSON — then
// writes the body durably into an inbox (DurableWriter) and answers 202 only once it is on disk.
// Depends on Spool, never on Store: "HTTP only writes the spool" is enforced by the compiler. Logs ids,
// routes and statuses only, never a body.

import Crypto
import HTTPTypes
package import Hummingbird
import JSONSchema
import Logging
import Metrics
package import NIOCore
import NIOHTTPTypes
package import Spool
import WebhookSignatures

/// A bearer token: its name (for logs and audit), the SHA-256 of its secret, the routes it may write.
package struct HTTPToken: Sendable {
    package var name: String
    package var sha256: [UInt8]
    package var routes: Set<String>
    /// The length in bytes of the secret, when it was given (nil when only its SHA-256 was): for
    /// ``SecretRule`` at start.
    package var secretBytes: Int?

    package init(name: String, sha256: [UInt8], routes: Set<String>, secretBytes: Int? = nil) {
        self.name = name
        self.sha256 = sha256
        self.routes = routes
        self.secretBytes = secretBytes
    }

    /// `NAME:SECRET:ROUTE[,ROUTE…]` with routes among appointments, zoom, intake (or `*`). An empty
    /// secret parses (its length recorded), so that ``SecretRule`` refuses it with the others.
    package init?(spec: String) {
        let parts = spec.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty else { return nil }
        name = String(parts[0])
        sha256 = Array(SHA256.hash(data: Array(parts[1].utf8)))
        secretBytes = parts[1].utf8.count
        let list = parts[2].split(separator: ",").map(String.init)
        routes = Set(list.contains("*") ? ["appointments", "zoom", "intake"] : list)
        guard !routes.isEmpty, routes.isSubset(of: ["appointments", "zoom", "intake"]) else { return nil }
    }
}

/// The rule every configured secret must pass before the endpoint starts: a bearer token's secret, a
/// Zoom secret token, a Standard Webhooks secret (its key bytes, after `whsec_` and base64). An empty
/// secret would let anyone sign (`whsec_` is the empty HMAC key) and a short one is guessed: both are
/// refused, naming the key that holds them. The one place this is decided; the executable applies it to
/// flags and the configuration file alike.
package enum SecretRule {
    /// The fewest bytes a secret's key may have.
    package static let minimumBytes = 16

    /// Why a key of `count` bytes is refused, nil when it is accepted.
    package static func weakness(keyBytes count: Int) -> String? {
        if count == 0 { return "is empty: give a secret of at least \(minimumBytes) bytes" }
        if count < minimumBytes { return "is too weak: \(count) bytes, at least \(minimumBytes) are required" }
        return nil
    }

    /// Why a Zoom secret token is refused (its UTF-8 bytes are the HMAC key), nil when it is accepted.
    package static func weakness(zoomSecret: String) -> String? {
        weakness(keyBytes: zoomSecret.utf8.count)
    }

    /// Why a Standard Webhooks secret is refused, judged by its key bytes after decoding, nil when it is
    /// accepted.
    package static func weakness(webhookSecret: String) -> String? {
        let key = StandardWebhooks.key(secret: webhookSecret)
        guard let reason = weakness(keyBytes: key.count) else { return nil }
        return key.isEmpty ? reason : reason + " (after base64 decoding)"
    }
}

/// The endpoint's settings. Every key has a default.
package struct HTTPConfiguration: Sendable {
    /// Where to listen. Default 127.0.0.1:8080.
    package var host: String
    package var port: Int
    /// Body limits: webhooks 1 MiB, `POST /ingest` 64 MiB.
    package var webhookBodyLimit: Int
    package var ingestBodyLimit: Int
    /// Bearer tokens; none means no bearer auth (then only loopback may be bound).
    package var tokens: [HTTPToken]
    /// Zoom secret tokens (two at once during a rotation): `x-zm-signature` is required when set.
    package var zoomSecrets: [String]
    /// Standard Webhooks secrets per route kind (two during a rotation): where set, `webhook-id`,
    /// `webhook-timestamp` and `webhook-signature` are required and verified instead of a bearer token,
    /// and `webhook-id` is the request's idempotency key.
    package var webhookSecrets: [String: [String]]
    /// How far `x-zm-request-timestamp` and `webhook-timestamp` may be from now. Default 300 s.
    package var timestampTolerance: Int
    /// Requests a second per authenticated sender (bearer token name, or the route for signed and opened
    /// routes), bursts up to the same number, taken after authentication; nil for no limit (the default).
    /// Failed attempts are limited apart, per client address (``failedAttemptsPerSecond``): an attacker's
    /// 429s never reach a genuine sender.
    package var ratePerSecond: Double?
    /// Routes (kinds) opened without credentials: only on a loopback address. A route with neither a
    /// credential nor this is closed: 401. Default none.
    package var openRoutes: Set<String>
    /// Backpressure: 503 with Retry-After while an inbox holds more than this many files (default
    /// 20,000) or the spool's filesystem has less than `diskReserve` bytes free (default 256 MiB).
    package var inboxHighWater: Int
    package var diskReserve: Int64
    /// Slow clients: a connection that has not sent a whole request head this long after it opened or
    /// after its last response is closed (default 10 s); a body not received within `bodyTimeout` of its
    /// head is answered 408 (default 60 s).
    package var headerTimeout: Duration
    package var bodyTimeout: Duration
    /// Most connections open at once; further ones wait in the listen backlog (default 1,024).
    package var maxConnections: Int
    /// Memory budget of the door (``BodyBudget``), in bytes (default 64 MiB, a quarter of
    /// `memory_budget`): bodies of senders verified before their body (bearer tokens, opened routes) hold
    /// at most this together, bodies read before their signature is checked half of it, one client
    /// address a sixteenth. A body is counted as its parts arrive; one whose next part does not fit is
    /// answered 503 with Retry-After. A route's body limit is capped to what its pool lets one request
    /// hold, so one request alone always fits.
    package var bodyBudget: Int
    /// The largest JSON document, or element of an ingest array, accepted (default 1 MiB, the pipeline's
    /// record limit): a larger one is answered 413, never parsed.
    package var recordLimit: Int
    /// The schema's own strings (``Catalog/schemaConstants``): error messages show these to senders and
    /// mask every other quoted value.
    package var schemaConstants: Set<String> = []

    package init(
        host: String = "127.0.0.1",
        port: Int = 8080,
        webhookBodyLimit: Int = 1 << 20,
        ingestBodyLimit: Int = 64 << 20,
        tokens: [HTTPToken] = [],
        zoomSecrets: [String] = [],
        webhookSecrets: [String: [String]] = [:],
        timestampTolerance: Int = 300,
        ratePerSecond: Double? = nil,
        inboxHighWater: Int = 20_000,
        diskReserve: Int64 = 256 << 20,
        headerTimeout: Duration = .seconds(10),
        bodyTimeout: Duration = .seconds(60),
        maxConnections: Int = 1_024,
        openRoutes: Set<String> = [],
        bodyBudget: Int = 64 << 20,
        recordLimit: Int = 1 << 20
    ) {
        self.bodyBudget = bodyBudget
        self.recordLimit = recordLimit
        self.host = host
        self.port = port
        self.webhookBodyLimit = webhookBodyLimit
        self.ingestBodyLimit = ingestBodyLimit
        self.tokens = tokens
        self.zoomSecrets = zoomSecrets
        self.webhookSecrets = webhookSecrets
        self.timestampTolerance = timestampTolerance
        self.ratePerSecond = ratePerSecond
        self.inboxHighWater = inboxHighWater
        self.diskReserve = diskReserve
        self.headerTimeout = headerTimeout
        self.bodyTimeout = bodyTimeout
        self.maxConnections = maxConnections
        self.openRoutes = openRoutes
    }

    /// Failed attempts (401, 403) allowed per client address: a second on average, bursts of 20; past
    /// them the address is answered 429 before its request is read.
    package static let failedAttemptsPerSecond = 1.0
    package static let failedAttemptsBurst = 20.0

    /// How a route is protected.
    package enum Protection: Sendable, Equatable {
        /// Zoom's `x-zm-signature` (the Zoom route with a Zoom secret).
        case zoomSignature
        /// Standard Webhooks signatures (a route with webhook secrets).
        case webhookSignature
        /// A bearer token naming the route; these tokens' names.
        case bearer([String])
        /// Opened without credentials (loopback only).
        case open
        /// No credential configured and not opened: every request 401.
        case closed
    }

    /// The protection of the route of `kind`: a signature where a secret is configured, else bearer tokens
    /// when any token is configured (only those naming the route pass), else open if opened, else closed.
    package func protection(of kind: String) -> Protection {
        if kind == "zoom" && !zoomSecrets.isEmpty { return .zoomSignature }
        if !(webhookSecrets[kind] ?? []).isEmpty { return .webhookSignature }
        let named = tokens.filter { $0.routes.contains(kind) }.map(\.name)
        if !named.isEmpty || (!tokens.isEmpty && !openRoutes.contains(kind)) { return .bearer(named) }
        return openRoutes.contains(kind) ? .open : .closed
    }

    /// Whether `host` is a loopback address: an IPv4 literal in 127.0.0.0/8, `::1`, or `localhost`. A name
    /// is never judged by its spelling (`127.example.org` may resolve anywhere).
    package var isLoopback: Bool {
        if host == "localhost" || host == "::1" || host == "[::1]" { return true }
        let octets = host.split(separator: ".", omittingEmptySubsequences: false)
        guard octets.count == 4, octets[0] == "127" else { return false }
        return octets.allSatisfy { part in
            !part.isEmpty && part.count <= 3 && part.allSatisfy(\.isASCII) && part.allSatisfy(\.isNumber)
                && Int(part).map { $0 <= 255 } == true
        }
    }

    /// Why this configuration must not start: a route opened without credentials on an address that is
    /// not loopback.
    package var refusal: String? {
        let opened = ["appointments", "zoom", "intake"].filter { protection(of: $0) == .open }
        if !opened.isEmpty && !isLoopback {
            return "routes opened without credentials (\(opened.joined(separator: ", "))) may listen on loopback "
                + "only, not on \(host): give them bearer tokens or signing secrets"
        }
        return nil
    }
}

/// What `GET /health` reports; the executable supplies it (this module cannot read the database).
package struct HealthReport: Sendable {
    package var databaseUp: Bool
    package var received: Int
    package var inserted: Int
    package var inbox: Int
    package var processing: Int
    package var failed: Int

    package init(databaseUp: Bool, received: Int, inserted: Int, inbox: Int, processing: Int, failed: Int) {
        self.databaseUp = databaseUp
        self.received = received
        self.inserted = inserted
        self.inbox = inbox
        self.processing = processing
        self.failed = failed
    }
}

/// A spooled request's verdict, from the ledger (which only the executable can read).
package struct SpoolVerdict: Sendable {
    /// Who sent the file (the audit trail's actor: `http:<token name>` for a bearer token), if known.
    package var sender: String?
    package var outcome: String
    package var stored: Int
    package var duplicates: Int
    package var rejected: Int
    /// (record, line, pointer, message) of each problem.
    package var errors: [(record: Int?, line: Int?, pointer: String?, message: String)]

    package init(
        sender: String? = nil,
        outcome: String,
        stored: Int,
        duplicates: Int,
        rejected: Int,
        errors: [(record: Int?, line: Int?, pointer: String?, message: String)]
    ) {
        self.sender = sender
        self.outcome = outcome
        self.stored = stored
        self.duplicates = duplicates
        self.rejected = rejected
        self.errors = errors
    }
}

/// The context of carespool's routes: Hummingbird's basic context and the request's connection, so
/// that a route can answer `Expect: 100-continue` with an interim `100 Continue` once the request has
/// passed every check that needs no body (RFC 9110 §10.1.1). curl sends that expectation for bodies
/// over 1 MiB, .NET Framework's HttpWebRequest by default for every POST; unanswered, each such
/// request waited out the client's timeout (1 s for curl, 350 ms for .NET) before sending its body.
package struct IngressContext: RequestContext {
    package var coreContext: CoreRequestContextStorage
    package let channel: any Channel

    package init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }
}

/// The routes, for the application and for tests (`app.test(.router)`). `verdict` finds the ledger's
/// verdict on a file by its id and kind.
package func buildRouter(
    configuration: HTTPConfiguration,
    spool: Spool,
    health: @escaping @Sendable () async -> HealthReport,
    metrics: (@Sendable () async -> String)? = nil,
    verdict: @escaping @Sendable (_ id: String, _ kind: String) async -> SpoolVerdict? = { _, _ in nil },
    now: @escaping @Sendable () -> Int = { Int(time(nil)) }
) -> Router<IngressContext> {
    let writer = DurableWriter(spool: spool)
    // A burst of at least one request: below 1 per second the bucket could never hold a whole token.
    let limiter = configuration.ratePerSecond.map { RateLimiter(rate: $0, burst: max(1, $0)) }
    let failures = RateLimiter(
        rate: HTTPConfiguration.failedAttemptsPerSecond,
        burst: HTTPConfiguration.failedAttemptsBurst
    )
    let pressure = Backpressure(
        spool: spool,
        highWater: configuration.inboxHighWater,
        reserve: configuration.diskReserve
    )
    let bodies = BodyBudget(share: configuration.bodyBudget)
    let router = Router(context: IngressContext.self)
    router.add(middleware: RequestMetrics())
    let routes: [(path: RouterPath, kind: String)] = [
        ("/webhook/appointments", "appointments"), ("/zoom_events/events", "zoom"), ("/ingest", "intake"),
    ]
    for route in routes {
        guard let inbox = spool.inboxes.first(where: { $0.kind == route.kind }) else { continue }
        router.post(route.path) { request, context -> Response in
            let ingress = Ingress(
                configuration: configuration,
                writer: writer,
                inbox: inbox,
                limiter: limiter,
                failures: failures,
                pressure: pressure,
                bodies: bodies,
                now: now
            )
            let response = try await ingress.handle(request, context: context)
            // RFC 7240 `Prefer: wait=N`: wait up to N seconds for the pipeline's verdict.
            guard response.status == .accepted || (route.kind == "zoom" && response.status == .ok),
                response.headers[Ingress.spoolID] != nil, let seconds = Ingress.preferredWait(request),
                let id = response.headers[Ingress.spoolID]
            else { return response }
            let deadline = ContinuousClock.now + .seconds(seconds)
            while ContinuousClock.now < deadline {
                if let found = await verdict(id, inbox.kind) {
                    return Ingress.answer(id: id, found, constants: configuration.schemaConstants)
                }
                try await Task.sleep(for: .milliseconds(25))
            }
            return response
        }
    }
    router.get("/spool/:id") { request, context -> Response in
        // Readable: the kinds whose route is open, and those the presented bearer token may write. A
        // signed sender has no token: it waits for its verdict with `Prefer: wait` instead.
        let client = Ingress.clientAddress(context)
        let opened = Set(spool.kinds.filter { configuration.protection(of: $0) == .open })
        var readable = opened
        // A token reads the verdicts of what it sent, never another sender's: a conflict message names
        // the file that holds the first record, and that id must not open another sender's verdict.
        var reader: String?
        if let header = request.headers[.authorization], let credentials = Ingress.bearerCredentials(header) {
            let presented = Array(SHA256.hash(data: Array(credentials.utf8)))
            if let token = configuration.tokens.first(where: { ZoomSignature.constantTimeEqual($0.sha256, presented) })
            {
                readable.formUnion(token.routes)
                reader = "http:" + token.name
            }
        }
        guard !readable.isEmpty else {
            if let retryAfter = failures.take(client) {
                var response = Ingress.error(.tooManyRequests, "too many failed attempts from this address")
                response.headers[.retryAfter] = String(retryAfter)
                return response
            }
            return Ingress.error(.unauthorized, "a bearer token of the request's route is required")
        }
        let id = context.parameters.get("id") ?? ""
        guard Spool.isID(id) else { return Ingress.error(.badRequest, "not a spool id") }
        let name = Spool.requestName(id: id)
        for kind in spool.kinds where readable.contains(kind) {
            // An opened route has no senders to tell apart: anyone who may post there reads its verdicts.
            if let found = await verdict(id, kind), opened.contains(kind) || (reader != nil && found.sender == reader) {
                let state = found.outcome == "rejected" ? "failed" : "done"
                let errors = found.errors.map { problem in
                    "{\"record\":\(problem.record.map(String.init) ?? "null"),\"line\":\(problem.line.map(String.init) ?? "null"),"
                        + "\"pointer\":\(problem.pointer.map(JSONValue.quoted) ?? "null"),"
                        + "\"message\":\(JSONValue.quoted(JSONSchema.masked(problem.message, keeping: configuration.schemaConstants)))}"
                }
                return Ingress.json(
                    .ok,
                    "{\"id\":\"\(id)\",\"kind\":\"\(kind)\",\"state\":\"\(state)\",\"outcome\":\"\(found.outcome)\","
                        + "\"counts\":{\"stored\":\(found.stored),\"duplicates\":\(found.duplicates),\"rejected\":\(found.rejected)},"
                        + "\"errors\":[\(errors.joined(separator: ","))]}"
                )
            }
            let (inInbox, inProcessing) = spool.requestState(kind: kind, name: name, id: id)
            if inInbox || inProcessing {
                let state = inInbox ? "inbox" : "processing"
                return Ingress.json(
                    .ok,
                    "{\"id\":\"\(id)\",\"kind\":\"\(kind)\",\"state\":\"\(state)\",\"outcome\":null}"
                )
            }
        }
        return Ingress.error(.notFound, "no spooled request with this id")
    }
    if let metrics {
        // Prometheus text exposition (swift-metrics through swift-prometheus, rendered by the executable).
        router.get("/metrics") { _, _ -> Response in
            Response(
                status: .ok,
                headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: ResponseBody(byteBuffer: ByteBuffer(string: await metrics()))
            )
        }
    }
    router.get("/health") { _, _ -> Response in
        let report = await health()
        let status: HTTPResponse.Status = report.databaseUp ? .ok : .serviceUnavailable
        let body =
            "{\"status\":\"\(report.databaseUp ? "ok" : "error")\",\"db\":\"\(report.databaseUp ? "up" : "down")\","
            + "\"received\":\(report.received),\"inserted\":\(report.inserted),\"queues\":{\"inbox\":\(report.inbox),"
            + "\"processing\":\(report.processing),\"failed\":\(report.failed)}}"
        return Ingress.json(status, body)
    }
    // Load balancers' and uptime monitors' checks that ask with HEAD: the same status, no body.
    router.head("/health") { _, _ -> Response in
        Response(status: await health().databaseUp ? .ok : .serviceUnavailable)
    }
    return router
}

/// Counts requests by route and status (`carespool_http_requests_total`). Routes are the fixed paths
/// (`/spool/{id}` for every id, `other` for anything else), so the label set stays small.
struct RequestMetrics<Context: RequestContext>: RouterMiddleware {
    static func route(_ path: String) -> String {
        switch path {
        case "/webhook/appointments", "/zoom_events/events", "/ingest", "/health", "/metrics": path
        default: path.hasPrefix("/spool/") ? "/spool/{id}" : "other"
        }
    }

    func handle(
        _ request: Request,
        context: Context,
        next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        let route = Self.route(request.uri.path)
        do {
            let response = try await next(request, context)
            Counter(
                label: "carespool_http_requests_total",
                dimensions: [("route", route), ("status", "\(response.status.code)")]
            )
            .increment()
            return response
        } catch {
            let status = (error as? any HTTPResponseError)?.status.code ?? 500
            Counter(label: "carespool_http_requests_total", dimensions: [("route", route), ("status", "\(status)")])
                .increment()
            throw error
        }
    }
}

/// One route's door checks and the durable write.
private struct Ingress {
    let configuration: HTTPConfiguration
    let writer: DurableWriter
    let inbox: Spool.Inbox
    let limiter: RateLimiter?
    /// Failed attempts per client address.
    let failures: RateLimiter
    let pressure: Backpressure
    /// The bodies held at once (the door's memory budget).
    let bodies: BodyBudget
    let now: @Sendable () -> Int

    static let zoomSignature = HTTPField.Name("x-zm-signature")!
    static let zoomTimestamp = HTTPField.Name("x-zm-request-timestamp")!

    /// Whether a sender's timestamp is within `tolerance` seconds of now. The header is the sender's: a
    /// value near Int.min overflowed `abs(now - seconds)` — a trap any client could cause before
    /// authentication (found by review).
    static func isRecent(_ seconds: Int, now: Int, _ tolerance: Int) -> Bool {
        let (difference, overflow) = now.subtractingReportingOverflow(seconds)
        return !overflow && difference.magnitude <= UInt(tolerance)
    }

    static func json(_ status: HTTPResponse.Status, _ body: String) -> Response {
        Response(
            status: status,
            headers: [.contentType: "application/json"],
            body: ResponseBody(byteBuffer: ByteBuffer(string: body))
        )
    }

    /// A digest in lower-case hexadecimal.
    static func hex(_ digest: SHA256.Digest) -> String {
        digest.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }

    static let spoolID = HTTPField.Name("x-carespool-id")!
    static let replayedHeader = HTTPField.Name("x-carespool-replayed")!
    static let webhookID = HTTPField.Name("webhook-id")!
    static let webhookTimestamp = HTTPField.Name("webhook-timestamp")!
    static let webhookSignature = HTTPField.Name("webhook-signature")!

    enum BodyError: Error { case tooLarge, timedOut, overBudget }

    /// The whole body, at most `limit` bytes, received within `timeout` (slow clients are cut off).
    /// Read in a child task, cancelled at the deadline, so that this one — which answers — never is.
    static func collect(
        _ body: RequestBody,
        upTo limit: Int,
        declared: Int?,
        within timeout: Duration,
        holding held: BodyBudget.Holding
    ) async throws -> [UInt8] {
        let now = Clock.monotonicNanos()
        let deadline = now + min(timeout.nanoseconds, Int64.max - now)
        async let reading = Deadlines.shared.run(until: deadline) {
            // Each part is counted against the door's budget as it arrives and copied once into the bytes
            // that are checked and written (NIO's part is let go), so a body held is a body paid for, a
            // slow one only for what it sent.
            var bytes: [UInt8] = []
            // Reserved once from the declared length: grown by doubling, the bytes would take up to twice
            // what the budget counts while they grow.
            if let declared { bytes.reserveCapacity(min(declared, limit)) }
            for try await part in body {
                guard bytes.count + part.readableBytes <= limit else { throw BodyError.tooLarge }
                guard held.take(part.readableBytes) else { throw BodyError.overBudget }
                bytes.append(contentsOf: part.readableBytesView)
            }
            return bytes
        }
        guard let bytes = try await reading else { throw BodyError.timedOut }
        return bytes
    }

    /// N of a `Prefer: wait=N` header, capped at 60 s.
    static func preferredWait(_ request: Request) -> Int? {
        guard let prefer = request.headers[HTTPField.Name("prefer")!] else { return nil }
        for part in prefer.split(separator: ",") {
            let token = part.trimmingCharacters()
            if token.hasPrefix("wait="), let seconds = Int(token.dropFirst(5)), seconds > 0 { return min(seconds, 60) }
        }
        return nil
    }

    /// The answer of the appointment receiver this replaces: 200 stored, 409 duplicate or conflict, 400
    /// with the validation errors (the payload's values masked, the schema's own strings shown).
    static func answer(id: String, _ found: SpoolVerdict, constants: Set<String>) -> Response {
        let errors = found.errors.map { problem in
            "{\"record\":\(problem.record.map(String.init) ?? "null"),\"pointer\":\(problem.pointer.map(JSONValue.quoted) ?? "null"),"
                + "\"message\":\(JSONValue.quoted(JSONSchema.masked(problem.message, keeping: constants)))}"
        }
        let conflict = found.errors.contains { $0.message.hasPrefix("conflicts with") }
        let status: HTTPResponse.Status =
            switch found.outcome {
            case "accepted": .ok
            case "duplicate": .conflict
            default: conflict && found.stored == 0 ? .conflict : .badRequest
            }
        return json(
            status,
            "{\"status\":\"\(found.outcome)\",\"id\":\"\(id)\",\"counts\":{\"stored\":\(found.stored),"
                + "\"duplicates\":\(found.duplicates),\"rejected\":\(found.rejected)},\"errors\":[\(errors.joined(separator: ","))]}"
        )
    }

    /// The credentials of an `Authorization: Bearer …` header: the scheme matched case-insensitively
    /// (RFC 9110 §11.1: `bearer`, `BEARER` are `Bearer`), then one or more spaces; nil for another scheme.
    static func bearerCredentials(_ header: String) -> Substring? {
        let bytes = header.utf8
        guard let space = bytes.firstIndex(of: UInt8(ascii: " ")),
            header[..<space].lowercased() == "bearer"
        else { return nil }
        let credentials = header[space...].drop { $0 == " " }
        return credentials.isEmpty ? nil : credentials
    }

    static func error(_ status: HTTPResponse.Status, _ message: String) -> Response {
        json(status, "{\"status\":\"error\",\"error\":\(JSONValue.quoted(message))}")
    }

    /// The client's address, for the failed-attempt limit.
    static func clientAddress(_ context: IngressContext) -> String {
        context.channel.remoteAddress?.ipAddress ?? "unknown"
    }

    /// A 401 or 403, counted against the client's address; past the address's failed attempts, a 429
    /// instead. Only failures count and only failures are refused so: a request whose credential holds is
    /// heard whatever its address did before (behind a reverse proxy, or a NAT, every sender shares one).
    func refuse(_ status: HTTPResponse.Status, _ message: String, client: String) -> Response {
        if let retryAfter = failures.take(client) {
            var response = Self.error(.tooManyRequests, "too many failed attempts from this address")
            response.headers[.retryAfter] = String(retryAfter)
            return response
        }
        return Self.error(status, message)
    }

    /// A 429 for `sender` when the authenticated sender's rate is used up.
    func rateLimited(_ sender: String) -> Response? {
        guard let limiter, let retryAfter = limiter.take(sender) else { return nil }
        var response = Self.error(.tooManyRequests, "rate limit exceeded")
        response.headers[.retryAfter] = String(retryAfter)
        return response
    }

    func handle(_ request: Request, context: IngressContext) async throws -> Response {
        let isZoom = inbox.kind == "zoom"
        let protection = configuration.protection(of: inbox.kind)
        let zoomSigned = protection == .zoomSignature
        let webhookKeys =
            protection == .webhookSignature
            ? (configuration.webhookSecrets[inbox.kind] ?? []).map(StandardWebhooks.key(secret:)) : []
        let client = Self.clientAddress(context)
        var sender = "route:" + inbox.kind
        switch protection {
        case .closed:
            return refuse(
                .unauthorized,
                "no credential is configured for this route: it is closed (give it a bearer token or a signing "
                    + "secret, or open it on loopback)",
                client: client
            )
        case .bearer:
            guard let header = request.headers[.authorization], let credentials = Self.bearerCredentials(header) else {
                return refuse(.unauthorized, "missing bearer token", client: client)
            }
            let presented = Array(SHA256.hash(data: Array(credentials.utf8)))
            guard
                let token = configuration.tokens.first(where: { ZoomSignature.constantTimeEqual($0.sha256, presented) })
            else { return refuse(.unauthorized, "unknown bearer token", client: client) }
            guard token.routes.contains(inbox.kind) else {
                return refuse(.forbidden, "token \(token.name) may not write \(inbox.kind)", client: client)
            }
            sender = "token:" + token.name
            // Authenticated before its body is read: its rate is taken here.
            if let limited = rateLimited(sender) { return limited }
        case .open:
            if let limited = rateLimited(sender) { return limited }
        case .zoomSignature, .webhookSignature:
            break  // verified with the body below, then rate-limited
        }
        // Media types are case-insensitive (RFC 9110 §8.3.1): `Application/JSON` is JSON too.
        let contentType = request.headers[.contentType] ?? ""
        guard contentType.split(separator: ";").first?.trimmingCharacters().lowercased() == "application/json" else {
            return Self.error(.unsupportedMediaType, "Content-Type must be application/json")
        }
        // A compressed body would be spooled as its compressed bytes: refused by name (RFC 9110 §15.5.16).
        if let coding = request.headers[.contentEncoding], coding.trimmingCharacters().lowercased() != "identity" {
            return Self.error(.unsupportedMediaType, "Content-Encoding is not supported: send the body uncompressed")
        }
        // Bodies read before their signature can be checked come from the unverified pool, capped per
        // client address; a route's limit never exceeds what its pool lets one request hold.
        let verifiedFirst = protection != .zoomSignature && protection != .webhookSignature
        let limit = min(
            inbox.kind == "intake" ? configuration.ingestBodyLimit : configuration.webhookBodyLimit,
            bodies.limit(verifiedFirst: verifiedFirst)
        )
        // A declared length over the limit is refused before a byte of the body is read.
        if let declared = request.headers[.contentLength].flatMap({ Int($0) }), declared > limit {
            return Self.error(.contentTooLarge, "body larger than \(limit) bytes")
        }
        // Memory: the bodies held at once stay within the door's budget (a request that does not fit is
        // told when to come back), whatever their number and size.
        let held = bodies.holding(unverifiedFrom: verifiedFirst ? nil : BodyBudget.addressKey(client))
        defer { held.release() }
        // A sender expecting `100 Continue` gets it only here, after every check its head allows, so a
        // refusal above reaches it before it has sent its body (and the body it may still send is read
        // and dropped, as for any refused request).
        if let expectation = request.headers[.expect] {
            guard expectation.lowercased() == "100-continue" else {
                return Self.error(.expectationFailed, "the only expectation understood is 100-continue")
            }
            // Nor is a sender made to send a body the inbox has no room for.
            if let reason = pressure.refusal(inbox) {
                var response = Self.error(.serviceUnavailable, reason)
                response.headers[.retryAfter] = "5"
                return response
            }
            // The sender waits for this before it sends the body.
            try? await context.channel.writeAndFlush(HTTPResponsePart.head(HTTPResponse(status: .continue)))
        }
        let bytes: [UInt8]
        do {
            bytes = try await Self.collect(
                request.body,
                upTo: limit,
                declared: request.headers[.contentLength].flatMap { Int($0) },
                within: configuration.bodyTimeout,
                holding: held
            )
        } catch BodyError.overBudget {
            var response = Self.error(
                .serviceUnavailable,
                "request bodies held at once have reached the memory budget (\(configuration.bodyBudget >> 20) MiB)"
            )
            response.headers[.retryAfter] = "1"
            response.headers[.connection] = "close"
            return response
        } catch BodyError.tooLarge {
            return Self.error(.contentTooLarge, "body larger than \(limit) bytes")
        } catch BodyError.timedOut {
            var response = Self.error(.requestTimeout, "body not received within \(configuration.bodyTimeout)")
            response.headers[.connection] = "close"
            return response
        }
        var idempotencyKey: String?
        if !webhookKeys.isEmpty {
            let id = request.headers[Self.webhookID] ?? ""
            let timestamp = request.headers[Self.webhookTimestamp] ?? ""
            guard !id.isEmpty, id.utf8.count <= 256 else {
                return refuse(.unauthorized, "webhook-id missing or longer than 256 bytes", client: client)
            }
            guard let seconds = Int(timestamp), Self.isRecent(seconds, now: now(), configuration.timestampTolerance)
            else {
                return refuse(
                    .unauthorized,
                    "webhook-timestamp missing or more than 5 minutes off (replay)",
                    client: client
                )
            }
            let signature = request.headers[Self.webhookSignature] ?? ""
            guard
                StandardWebhooks.isValid(
                    header: signature,
                    id: id,
                    timestamp: timestamp,
                    body: bytes,
                    keys: webhookKeys
                )
            else { return refuse(.unauthorized, "webhook-signature does not match", client: client) }
            sender = "webhook:" + inbox.kind
            if let limited = rateLimited(sender) { return limited }
            // The key's file name: hex SHA-256 of the id (any bytes a sender chooses stay out of paths).
            idempotencyKey = Self.hex(SHA256.hash(data: Array(id.utf8)))
        }
        if zoomSigned {
            let timestamp = request.headers[Self.zoomTimestamp] ?? ""
            guard let seconds = Int(timestamp), Self.isRecent(seconds, now: now(), configuration.timestampTolerance)
            else {
                return refuse(
                    .unauthorized,
                    "x-zm-request-timestamp missing or more than 5 minutes off (replay)",
                    client: client
                )
            }
            let signature = request.headers[Self.zoomSignature] ?? ""
            let valid = configuration.zoomSecrets.contains {
                ZoomSignature.isValid(signature: signature, timestamp: timestamp, body: bytes, secret: $0)
            }
            guard valid else { return refuse(.unauthorized, "x-zm-signature does not match", client: client) }
            if let limited = rateLimited(sender) { return limited }
        }
        // Well-formed, checked without holding a large array whole (the pipeline streams it).
        let document: JSONParser.Checked
        do {
            // Checked without building values: a small document is parsed (the Zoom route looks inside), a
            // larger one or an array only walked, each record at most the pipeline's record limit.
            document = try JSONParser.check(bytes, keepUpTo: 64 << 10, elementLimit: configuration.recordLimit)
        } catch {
            if error.tooLarge {
                return Self.error(
                    .contentTooLarge,
                    "at byte \(error.offset): \(error.reason), the record limit (memory_budget / 256)"
                )
            }
            return Self.error(.badRequest, "not valid JSON at byte \(error.offset): \(error.reason)")
        }
        if inbox.kind == "intake", case .array = document {
        } else if inbox.kind == "intake" {
            return Self.error(.badRequest, "POST /ingest takes a JSON array of intake records")
        }
        if isZoom, case .value(let value) = document, value["event"]?.stringValue == "endpoint.url_validation" {
            guard let secret = configuration.zoomSecrets.first, let plain = value["payload"]?["plainToken"]?.stringValue
            else {
                return Self.error(
                    .badRequest,
                    "endpoint.url_validation needs a configured Zoom secret and a plainToken"
                )
            }
            let answer = ZoomSignature.urlValidationAnswer(plainToken: plain, secret: secret)
            return Self.json(
                .ok,
                "{\"plainToken\":\(JSONValue.quoted(answer.plainToken)),\"encryptedToken\":\"\(answer.encryptedToken)\"}"
            )
        }
        if let reason = pressure.refusal(inbox) {
            var response = Self.error(.serviceUnavailable, reason)
            response.headers[.retryAfter] = "5"
            return response
        }
        let id: String
        let replayed: Bool
        do {
            // The audit trail's "who": the token's name, or how the request proved itself.
            let who = "http:" + (sender.hasPrefix("token:") ? String(sender.dropFirst(6)) : sender)
            let digest = idempotencyKey.map { _ in Self.hex(SHA256.hash(data: bytes)) }
            (id, replayed) = try await writer.write(
                bytes,
                into: inbox,
                idempotencyKey: idempotencyKey,
                digest: digest,
                sender: who
            )
        } catch let conflict as IdempotencyConflict {
            // Stripe's answer to a key reused with other parameters: the first request stands.
            return Self.error(
                .conflict,
                "webhook-id \(JSONValue.quoted(request.headers[Self.webhookID] ?? "")) was already used for "
                    + "another body (request \(conflict.id)): an idempotency key names one request; "
                    + "send new content under a new webhook-id"
            )
        } catch let error as SpoolError where error.isNotAFolderAnyMore {
            // The inbox was replaced after start (said once by the pipeline, critical): nothing is taken in
            // that nobody would process.
            context.logger.critical("inbox folder replaced: request refused", metadata: ["route.kind": "\(inbox.kind)"])
            var response = Self.error(.serviceUnavailable, "the route's inbox is out of service; tell the operator")
            response.headers[.retryAfter] = "60"
            return response
        } catch let error as SpoolError where error.code == ENOSPC || error.code == EDQUOT {
            return Self.error(
                HTTPResponse.Status(code: 507, reasonPhrase: "Insufficient Storage"),
                "no space left for the request"
            )
        } catch {
            context.logger.error("spool write failed", metadata: ["route.kind": "\(inbox.kind)"])
            return Self.error(.internalServerError, "the request could not be written")
        }
        if replayed {
            context.logger.info("request replayed", metadata: ["spool.id": "\(id)", "route.kind": "\(inbox.kind)"])
        } else {
            context.logger.info("request spooled", metadata: ["spool.id": "\(id)", "route.kind": "\(inbox.kind)"])
        }
        // Zoom counts only 200 and 204 as delivered (anything else is retried at +5, +20 and +60 minutes,
        // then dropped): the Zoom route answers 200, with the same body; the others keep 202.
        var response = Self.json(
            isZoom ? .ok : .accepted,
            "{\"status\":\"accepted\",\"id\":\"\(id)\",\"request_id\":\"\(id)\"}"
        )
        response.headers[Self.spoolID] = id
        if replayed { response.headers[Self.replayedHeader] = "true" }
        return response
    }
}

extension StringProtocol {
    fileprivate func trimmingCharacters() -> String {
        var s = Substring(self)
        while s.first == " " { s.removeFirst() }
        while s.last == " " { s.removeLast() }
        return String(s)
    }
}

#if canImport(Glibc)
    import Glibc
#endif
