import HTTPIngress
import Logging
import ServiceLifecycle
import Spool
import Synchronization
import Systemd

/// What must be true before READY=1: the processor has recovered and done its first full rescan, and
/// the HTTP socket (when there is one) is bound.
final class Readiness: Sendable {
    private let state: Mutex<(processor: Bool, http: Bool)>

    init(http: Bool) { state = Mutex((false, !http)) }

    func processorReady() { state.withLock { $0.processor = true } }
    func httpReady() { state.withLock { $0.http = true } }
    var isReady: Bool { state.withLock { $0.processor && $0.http } }
}

/// Tells systemd how the daemon is doing: READY=1 once `readiness` holds, STATUS= with the queue depths
/// every 5 s, STOPPING=1 when graceful shutdown begins. (WATCHDOG=1 comes from the processing loop.)
/// Outside systemd it only waits for shutdown.
struct SystemdNotifier: Service {
    let readiness: Readiness
    let status: @Sendable () async -> String
    let logger: Logger

    func run() async throws {
        await withGracefulShutdownHandler {
            while !readiness.isReady && !Task.isShuttingDownGracefully && !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(20))
            }
            guard !Task.isShuttingDownGracefully, !Task.isCancelled else { return }
            let line = await status()
            Systemd.notify("READY=1\nSTATUS=" + line)
            logger.notice("carespool ready", metadata: ["systemd.notify": "\(Systemd.notifySocket != nil)"])
            while !Task.isShuttingDownGracefully && !Task.isCancelled {
                try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(5)) }
                if Task.isShuttingDownGracefully || Task.isCancelled { break }
                Systemd.notify("STATUS=" + (await status()))
            }
        } onGracefulShutdown: {
            Systemd.notify("STOPPING=1\nSTATUS=finishing the files in hand")
        }
    }
}
