#include "autotune/record.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <unordered_set>

#include "autotune/search_space.hpp"
#include "common/check.hpp"
#include "common/json.hpp"
#include "common/log.hpp"
#include "runtime/nvrtc.hpp"

namespace spattn::autotune {

using nlohmann::json;

namespace {

constexpr const char* kFields[] = {"spattn_record", "pass",  "arch",     "pattern",  "batch", "seq",
                                   "kv_seq",        "heads", "kv_heads", "head_dim", "dtype", "config",
                                   "deterministic", "documents"};

[[noreturn]] void bad(const std::string& where, const std::string& what) {
  SPATTN_FAIL(ErrorCode::kInvalidArgument, "{}: {}", where, what);
}

int64_t positive(const json& j, const char* field, const std::string& where, int64_t max) {
  if (!j.contains(field)) bad(where, fmt::format("\"{}\" is required", field));
  const json& v = j.at(field);
  if (!v.is_number_integer() || v.get<int64_t>() < 1 || v.get<int64_t>() >= max)
    bad(where + "." + field, fmt::format("must be a positive integer below {} (got {})", max, detail::describe_json(v)));
  return v.get<int64_t>();
}

std::string text(const json& j, const char* field, const std::string& where) {
  if (!j.contains(field) || !j.at(field).is_string()) bad(where, fmt::format("\"{}\" must be a string", field));
  return j.at(field).get<std::string>();
}

RecordedProblem parse_line(const json& j, const std::string& where) {
  if (!j.is_object()) bad(where, "must be a JSON object (one record per line)");
  for (const auto& [key, value] : j.items()) {
    (void)value;
    if (std::none_of(std::begin(kFields), std::end(kFields), [&](const char* f) { return key == f; }))
      bad(where + "." + key, "unknown field");
  }
  if (!j.contains("spattn_record") || j["spattn_record"] != 1)
    bad(where, "\"spattn_record\" must be 1 (a record written by this spattn)");
  RecordedProblem r;
  const std::string pass = text(j, "pass", where);
  if (pass == "forward") r.pass = TunePass::kForward;
  else if (pass == "backward") r.pass = TunePass::kBackward;
  else bad(where + ".pass", fmt::format("must be \"forward\" or \"backward\" (got \"{}\")", pass));
  r.arch = text(j, "arch", where);
  try {
    runtime::check_arch(r.arch);
  } catch (const Error& e) {
    SPATTN_FAIL(e.code(), "{}.arch: {}", where, e.what());
  }
  if (!j.contains("pattern") || !j["pattern"].is_object()) bad(where, "\"pattern\" must be a pattern object");
  r.pattern = Pattern::parse(j["pattern"].dump(), where + ".pattern");
  r.problem.batch = positive(j, "batch", where, 1 << 16);
  r.problem.nq = positive(j, "seq", where, int64_t{1} << 31);
  r.problem.nk = positive(j, "kv_seq", where, int64_t{1} << 31);
  r.problem.heads = positive(j, "heads", where, 1 << 16);
  r.problem.kv_heads = positive(j, "kv_heads", where, 1 << 16);
  if (r.problem.heads % r.problem.kv_heads != 0)
    bad(where + ".kv_heads", fmt::format("must divide heads ({})", r.problem.heads));
  r.problem.head_dim = positive(j, "head_dim", where, 1 << 16);
  const std::string dtype = text(j, "dtype", where);
  try {
    r.problem.dtype = dtype_from_string(dtype);
  } catch (const Error& e) {
    SPATTN_FAIL(ErrorCode::kInvalidArgument, "{}.dtype: {}", where, e.what());
  }
  try {
    check_problem_supported(r.problem.head_dim, r.problem.dtype);
    r.pattern.validate(r.problem.shape());
    r.config = KernelConfig::parse(text(j, "config", where));
    check_config(r.pass, r.config, static_cast<int>(r.problem.head_dim), r.problem.dtype, r.arch, 0);
  } catch (const Error& e) {
    SPATTN_FAIL(e.code(), "{}: {}", where, e.what());
  }
  if (j.contains("deterministic")) {
    if (!j["deterministic"].is_boolean()) bad(where + ".deterministic", "must be true or false");
    r.deterministic = j["deterministic"].get<bool>();
  }
  if (j.contains("documents")) {
    if (!j["documents"].is_boolean()) bad(where + ".documents", "must be true or false");
    r.documents = j["documents"].get<bool>();
  }
  return r;
}

// Writes and dedups per process; one per record file.
struct RecordFile {
  std::mutex mu;
  std::unordered_set<std::string> written;
  bool failed = false;
};

RecordFile& record_file(const std::string& path) {
  static std::mutex mu;
  static std::map<std::string, std::unique_ptr<RecordFile>> files;
  std::lock_guard<std::mutex> lock(mu);
  auto& f = files[path];
  if (!f) f = std::make_unique<RecordFile>();
  return *f;
}

// One whole line, appended under an exclusive lock; "" or the reason it failed.
std::string append_line(const std::string& path, const std::string& line) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0) return std::strerror(errno);
  std::string why;
  if (::flock(fd, LOCK_EX) != 0) why = std::strerror(errno);
  const std::string bytes = line + "\n";
  size_t done = 0;
  while (why.empty() && done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) why = n < 0 ? std::strerror(errno) : "short write";
    else done += static_cast<size_t>(n);
  }
  ::close(fd);  // releases the lock
  return why;
}

}  // namespace

std::string RecordedProblem::to_line() const {
  json j = {{"spattn_record", 1},
            {"pass", to_string(pass)},
            {"arch", arch},
            {"pattern", json::parse(pattern.to_json())},
            {"batch", problem.batch},
            {"seq", problem.nq},
            {"kv_seq", problem.nk},
            {"heads", problem.heads},
            {"kv_heads", problem.kv_heads},
            {"head_dim", problem.head_dim},
            {"dtype", to_string(problem.dtype)},
            {"config", config.to_string()},
            {"deterministic", deterministic}};
  if (documents) j["documents"] = true;  // absent otherwise: records of whole problems keep their lines
  return j.dump();
}

bool is_record(std::string_view text) {
  const size_t start = text.find_first_not_of(" \t\r\n");
  if (start == std::string_view::npos || text[start] != '{') return false;
  const size_t end = text.find('\n', start);
  const std::string_view first = text.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start);
  const json j = json::parse(first, nullptr, false);
  return j.is_object() && j.contains("spattn_record");
}

std::vector<RecordedProblem> parse_record(std::string_view text, const std::string& name) {
  std::vector<RecordedProblem> out;
  std::set<std::string> seen;
  size_t line_no = 0;
  for (size_t at = 0; at <= text.size();) {
    const size_t nl = text.find('\n', at);
    const std::string_view line = text.substr(at, nl == std::string_view::npos ? std::string_view::npos : nl - at);
    ++line_no;
    at = nl == std::string_view::npos ? text.size() + 1 : nl + 1;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    const std::string where = fmt::format("{}:{}", name, line_no);
    RecordedProblem r = parse_line(detail::parse_json_strict(line, where), where);
    if (seen.insert(r.to_line()).second) out.push_back(std::move(r));
  }
  if (out.empty()) bad(name, "holds no records");
  return out;
}

void record_problem(const std::string& path, const RecordedProblem& problem) {
  if (path.empty()) return;
  RecordFile& f = record_file(path);
  std::string line;
  try {
    line = problem.to_line();
  } catch (const std::exception& e) {
    log::warn("recording to {}: cannot encode the problem: {}", path, e.what());
    return;
  }
  std::lock_guard<std::mutex> lock(f.mu);
  if (f.failed || !f.written.insert(line).second) return;
  if (const std::string why = append_line(path, line); !why.empty()) {
    f.failed = true;
    log::warn("cannot record to {} ({}); recording to it stops for this process", path, why);
  }
}

std::string record_path(const std::string& explicit_path) {
  if (!explicit_path.empty()) return explicit_path;
  static const std::string from_env = [] {
    const char* v = std::getenv("SPATTN_RECORD");
    return std::string(v ? v : "");
  }();
  return from_env;
}

}  // namespace spattn::autotune
