# One Ruby Sidekiq 6.4.1 server draining N no-op jobs (run by bench_throughput.py
# as `sidekiq -c 25 -r ./bench/sidekiq_drain.rb`). When the N-th job finishes it
# writes a JSON report to $KIQ_BENCH_OUT: first-start to last-finish time, CPU
# per job over that window, and peak RSS.
require "sidekiq"
require "json"
Redis.silence_deprecations = true if Redis.respond_to?(:silence_deprecations=)
Sidekiq.configure_server { |c| c.redis = { url: ENV.fetch("REDIS_URL") } }
Sidekiq.logger.level = Logger::WARN

BENCH_N = Integer(ENV.fetch("KIQ_BENCH_N"))
BENCH_LOCK = Mutex.new
BENCH = { count: 0 }

class NoopJob
  include Sidekiq::Worker
  def perform(_i)
    c = BENCH_LOCK.synchronize { BENCH[:count] += 1 }
    if c == 1
      BENCH[:first] = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      BENCH[:cpu0] = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID)
    elsif c == BENCH_N
      elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - BENCH[:first]
      cpu = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID) - BENCH[:cpu0]
      hwm = File.read("/proc/self/status")[/VmHWM:\s+(\d+)/, 1].to_i
      File.write(ENV.fetch("KIQ_BENCH_OUT"), JSON.generate(
        "jobs" => c, "seconds" => elapsed, "rate" => BENCH_N / elapsed,
        "cpu_us_per_job" => cpu / BENCH_N * 1e6, "peak_rss_mb" => hwm / 1024.0,
      ))
    end
  end
end
