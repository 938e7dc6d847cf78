"""The report page's inline CSS (the page carries its own style: no external file)."""

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;margin:0;
 color:#1d1d1f;background:#f6f7f9;font-size:14px;line-height:1.45}
main{max-width:1320px;margin:0 auto;padding:18px 28px 40px}
header{background:#fff;border-bottom:1px solid #dde1e6;padding:16px 28px}
header h1{margin:0 0 6px;font-size:22px}
.meta span{display:inline-block;margin-right:22px;color:#444}
.meta b{color:#1d1d1f}
.disclaimer{margin:10px 0 4px;padding:8px 12px;background:#fff8e1;border-left:4px solid #f0b400;
 font-weight:600}
.check{margin:8px 0 0;padding:8px 12px;border-radius:4px;font-weight:600}
.check ul{margin:4px 0 0 18px;font-weight:400}
.check.pass{background:#e6f4ea;color:#1e7b34;border-left:4px solid #1e7b34}
.check.fail{background:#fdecea;color:#b3261e;border-left:4px solid #b3261e}
.check.none{background:#eef0f3;color:#555;border-left:4px solid #999}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;margin:18px 0;
 padding:6px 18px 16px}
h2{font-size:18px;border-bottom:1px solid #eceff3;padding-bottom:6px}
h3{font-size:15px;margin:14px 0 6px}
table{border-collapse:collapse;margin:6px 0 10px;font-size:12.5px}
th,td{border:1px solid #dfe3e8;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#f0f2f5;font-weight:600}
td:first-child,td:nth-child(2),th:first-child{text-align:left}
tbody tr:nth-child(even){background:#fafbfc}
table.kv th{text-align:left}table.kv td{text-align:left}
table.metrics td:nth-child(4){background:#f3f7ff}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
td code{white-space:nowrap}
figure{margin:10px 0}figure img{max-width:100%;height:auto;display:block}
figcaption{color:#555;font-size:12px;margin-top:4px}
.muted{color:#666}
.sig{font-weight:700}
.warn{color:#a15c00;font-weight:700}.bad{color:#b3261e;font-weight:700}
.feats{display:flex;flex-wrap:wrap;gap:8px 28px;align-items:flex-start}
.feat{min-width:220px}
.scroll{overflow-x:auto}
footer{color:#666;font-size:12px;text-align:center;padding:8px 0 24px}
"""
