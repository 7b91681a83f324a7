// spattn bundle: a deployment artefact in one step — compile (no GPU needed) every kernel
// a record of a service (SPATTN_RECORD) or a manifest needs, for the named archs, into
// the kernel cache, then export exactly those kernels (and, with --tuning, tuning
// databases) into one archive for `spattn cache import` on the production hosts.
#include <spattn/autotune.hpp>
#include <spattn/cache.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <iostream>
#include <set>

#include "api/tools.hpp"
#include "common/text.hpp"
#include "cli/cli.hpp"

namespace spattn::cli {

void register_bundle(CLI::App& app) {
  struct Args {
    std::string from;
    std::vector<std::string> archs;
    std::string out;
    std::string tuning = "none";
    std::string sign;
    int threads = 0;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand(
      "bundle", "compile what a record (SPATTN_RECORD) or manifest needs and export it as one archive (no GPU needed)");
  cmd->add_option("--from-record", args->from, "record file written with SPATTN_RECORD, or a prewarm manifest; - for stdin")
      ->required();
  cmd->add_option("--arch", args->archs, "only this arch of the record (repeatable; default: every recorded arch)");
  cmd->add_option("-o,--out", args->out, "archive to write")->required();
  cmd->add_option("--tuning", args->tuning,
                  "also carry tuning databases of the cache: all, none, or one GPU's (fingerprint hash or GPU name)")
      ->capture_default_str();
  cmd->add_option("--sign", args->sign, "sign the archive with this Ed25519 private key (PEM; see 'cache keygen')");
  cmd->add_option("--threads", args->threads, "compile threads (default: $SPATTN_NVRTC_THREADS or the core count)");

  cmd->callback([args] {
    if (args->threads < 0) throw UsageError("--threads must be >= 1");
    if (args->out == "-") throw UsageError("-o: bundle writes a file; use 'cache export -' for standard output");
    for (const std::string& arch : args->archs) tools::check_arch(arch);
    const std::string text = read_input_file(args->from, "--from-record");
    KernelCache& cache = KernelCache::instance();
    cache.ensure_writable();

    PrewarmOptions options;
    options.archs = args->archs;
    options.threads = args->threads;
    ProgressFeed feed("compiling");
    options.progress = feed.callback();
    const PrewarmReport report = prewarm(text, options);
    feed.finish();
    for (const PrewarmKernel& k : report.kernels)
      if (k.status == "failed") std::cerr << fmt::format("spattn: {} {} ({}): {}\n", k.arch, k.program, k.config, k.error);
    if (report.failed > 0)
      throw Error(ErrorCode::kCompile, fmt::format("{} of {} kernels failed to compile; nothing was bundled",
                                                   report.failed, report.kernels.size()));

    std::set<std::string> keys, archs;
    for (const PrewarmKernel& k : report.kernels) {
      keys.insert(k.key);
      archs.insert(k.arch);
    }
    ExportOptions exp;
    exp.filter = [&keys](const CacheEntry& e) { return keys.count(e.key) > 0; };
    exp.attachments = tools::tuning_attachments(cache.config().dir, args->tuning);
    exp.signing_key = args->sign;
    const ExportReport r = cache.export_archive(args->out, exp);
    if (r.exported != keys.size())
      throw Error(ErrorCode::kIo, fmt::format("{} of {} kernels could not be exported from '{}' (see 'spattn cache "
                                              "verify'); the archive is incomplete",
                                              keys.size() - r.exported, keys.size(), cache.config().dir.string()));
    if (globals().json) {
      print_json({{"archive", args->out},
                  {"kernels", r.exported},
                  {"compiled", report.compiled},
                  {"cached", report.cached},
                  {"archs", std::vector<std::string>(archs.begin(), archs.end())},
                  {"tuning_databases", r.attachments},
                  {"bytes", r.bytes},
                  {"signer", r.signer},
                  {"seconds", report.seconds}});
      return;
    }
    std::cout << fmt::format(
        "bundle: {} kernels ({} compiled, {} already cached) for {}{}, {} in {} ({:.1f} s){}\n", r.exported,
        report.compiled, report.cached, fmt::join(archs, ", "),
        r.attachments ? fmt::format(", {} tuning database{}", r.attachments, r.attachments == 1 ? "" : "s") : "",
        detail::human_bytes(r.bytes), args->out, report.seconds, r.signer.empty() ? "" : ", signed by " + r.signer);
  });
}

}  // namespace spattn::cli
