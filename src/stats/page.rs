//! `GET /`: the status page. One self-contained document (no external
//! assets, nothing fetched but /stats.json from the same port) that
//! refreshes itself every second; it also renders without JavaScript, from
//! the numbers filled in when it was served.

use std::fmt::Write;

use super::view::View;

const STYLE: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d232a;background:#f6f7f9}
h1{font-size:1.3em;margin:0 0 .2em}
.sub{color:#5b6670;margin-bottom:1em}
.cards{display:flex;flex-wrap:wrap;gap:.8em;margin-bottom:1em}
.card{background:#fff;border:1px solid #d9dee3;border-radius:6px;padding:.6em .9em;min-width:9em}
.card b{display:block;font-size:1.6em;font-variant-numeric:tabular-nums}
.card span{color:#5b6670;font-size:.85em}
table{border-collapse:collapse;background:#fff;border:1px solid #d9dee3;margin-bottom:1em}
th,td{padding:.3em .8em;text-align:right;border-bottom:1px solid #eceff2;font-variant-numeric:tabular-nums}
th{background:#eef1f4;font-weight:600}
td:first-child,th:first-child{text-align:left}
svg{background:#fff;border:1px solid #d9dee3;border-radius:6px}
.bad{color:#b3261e}
";

const SCRIPT: &str = r##"
function fmt(n,d){return Number(n).toFixed(d===undefined?1:d)}
function set(id,v){var e=document.getElementById(id);if(e)e.textContent=v}
function spark(h){
  // One slot per second of history, newest at the right edge.
  var w=600,ht=80,slots=HISTORY,max=Math.max(1,...h),step=w/(slots-1),first=slots-h.length;
  var pts=h.map(function(v,i){return ((first+i)*step).toFixed(1)+','+(ht-2-(v/max)*(ht-6)).toFixed(1)});
  var area=pts.length?'<polygon fill="#dbe7fd" points="'+(first*step).toFixed(1)+','+(ht-2)+' '+pts.join(' ')+' '+w+','+(ht-2)+'"/>':'';
  document.getElementById('spark').innerHTML=area+'<polyline fill="none" stroke="#2563eb" stroke-width="2" points="'+pts.join(' ')+'"/>';
  set('sparkmax','(peak '+fmt(Math.max(0,...h))+' Mbit/s)');
}
function render(s){
  var t=s.total,r=s.rates.last_second;
  set('rate',fmt(r.sent_mbps+r.received_mbps));
  set('tps',fmt(r.transfers_per_s));
  set('active',t.sessions_active);
  set('unverified',t.sessions_unverified);
  set('completed',t.transfers_completed);
  var failed=0;for(var k in t){if(k.indexOf('failed_')===0)failed+=t[k]}
  set('failed',failed);
  set('requests',t.requests_read+t.requests_write+t.requests_malformed);
  set('uptime','up '+fmt(s.uptime_s,0)+' s, version '+s.version+', '+s.shards_count+' shards');
  var rows='';
  s.shards.forEach(function(x){var c=x.counters;
    rows+='<tr><td>'+x.shard+'</td><td>'+(c.requests_read+c.requests_write+c.requests_malformed)+'</td><td>'+c.sessions_accepted+
      '</td><td>'+c.transfers_completed+'</td><td>'+c.sessions_active+'</td><td>'+c.sessions_unverified+
      '</td><td>'+fmt(x.rates.sent_mbps)+'</td><td>'+fmt(x.rates.received_mbps)+'</td><td>'+c.blocks_resent+'</td></tr>'});
  document.getElementById('shards').innerHTML=rows;
  spark(s.history_mbps.length?s.history_mbps:[0]);
  set('status','updated '+new Date().toLocaleTimeString());
  document.getElementById('status').className='';
}
function tick(){
  fetch('/stats.json',{cache:'no-store'}).then(function(r){return r.json()}).then(render)
    .catch(function(){set('status','server not answering');document.getElementById('status').className='bad'});
}
tick();setInterval(tick,1000);
"##;

/// The page, with the numbers of `view` filled in.
pub fn render(view: &View) -> String {
    let t = &view.total;
    let mut rows = String::new();
    for s in &view.shards {
        let c = &s.counters;
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{:.1}</td><td>{:.1}</td><td>{}</td></tr>",
            s.index,
            c.requests_total(),
            c.sessions_accepted,
            c.transfers_completed,
            c.sessions_active,
            c.sessions_unverified,
            s.rates.sent_mbps,
            s.rates.received_mbps,
            c.blocks_resent
        );
    }
    let card = |id: &str, value: String, label: &str| {
        format!("<div class=\"card\"><b id=\"{id}\">{value}</b><span>{label}</span></div>")
    };
    let cards = [
        card(
            "rate",
            format!("{:.1}", view.rates.total_mbps()),
            "Mbit/s (last second)",
        ),
        card(
            "tps",
            format!("{:.1}", view.rates.transfers_per_s),
            "transfers/s",
        ),
        card("active", t.sessions_active.to_string(), "sessions open"),
        card(
            "unverified",
            t.sessions_unverified.to_string(),
            "not yet answered",
        ),
        card("requests", t.requests_total().to_string(), "requests"),
        card(
            "completed",
            t.transfers_completed.to_string(),
            "transfers completed",
        ),
        card("failed", t.failed_total().to_string(), "failed"),
    ]
    .concat();
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>uftpd status</title><style>{STYLE}</style></head><body>\
         <h1>uftpd</h1><div class=\"sub\"><span id=\"uptime\">up {:.0} s, version {}, {} shards</span> \
         &middot; <span id=\"status\">served</span></div>\
         <div class=\"cards\">{cards}</div>\
         <table><thead><tr><th>shard</th><th>requests</th><th>accepted</th><th>completed</th>\
         <th>open</th><th>unverified</th><th>sent Mbit/s</th><th>received Mbit/s</th>\
         <th>blocks resent</th></tr></thead><tbody id=\"shards\">{rows}</tbody></table>\
         <div>Payload rate, last {} s <span id=\"sparkmax\"></span></div>\
         <svg id=\"spark\" width=\"600\" height=\"80\" viewBox=\"0 0 600 80\"></svg>\
         <p class=\"sub\">Also: <a href=\"/metrics\">/metrics</a> (Prometheus), \
         <a href=\"/stats.json\">/stats.json</a>.</p>\
         <script>var HISTORY={};{SCRIPT}</script></body></html>\n",
        view.uptime_s,
        view.version,
        view.shards.len(),
        super::view::HISTORY_SECONDS,
        super::view::HISTORY_SECONDS,
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_is_self_contained() {
        let page = super::render(&crate::stats::report::tests::sample_view());
        assert!(page.starts_with("<!DOCTYPE html>"));
        for external in ["src=\"http", "href=\"http", "@import", "<link"] {
            assert!(!page.contains(external), "{external}");
        }
        assert!(page.contains("fetch('/stats.json'"));
        assert!(
            page.contains("<td>0</td><td>4</td><td>3</td><td>2</td>"),
            "{page}"
        );
    }
}
